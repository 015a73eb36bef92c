// The only script of berth's UI: confirm before a delete, copy the pull command.
document.addEventListener("submit", (e) => {
  const msg = e.target.dataset && e.target.dataset.confirm;
  if (msg && !window.confirm(msg)) e.preventDefault();
});
document.addEventListener("click", (e) => {
  const b = e.target.closest && e.target.closest("button[data-copy]");
  if (!b) return;
  const source = document.getElementById(b.dataset.copy);
  const done = () => { b.textContent = "Copied"; };
  // Without clipboard permission (or outside a secure context): select the text and copy the selection.
  const fallback = () => {
    const r = document.createRange();
    r.selectNodeContents(source);
    const s = window.getSelection();
    s.removeAllRanges();
    s.addRange(r);
    if (document.execCommand("copy")) done();
  };
  if (navigator.clipboard && window.isSecureContext) {
    navigator.clipboard.writeText(source.textContent).then(done, fallback);
  } else {
    fallback();
  }
});
