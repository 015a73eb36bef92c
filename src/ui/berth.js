// The only script of berth's UI: confirm before a delete, copy the pull command.
document.addEventListener("submit", (e) => {
  const msg = e.target.dataset && e.target.dataset.confirm;
  if (msg && !window.confirm(msg)) e.preventDefault();
});
document.addEventListener("click", (e) => {
  const b = e.target.closest && e.target.closest("button[data-copy]");
  if (!b) return;
  const text = document.getElementById(b.dataset.copy).textContent;
  const done = () => { b.textContent = "Copied"; };
  if (navigator.clipboard && window.isSecureContext) {
    navigator.clipboard.writeText(text).then(done, () => {});
  } else {
    const r = document.createRange();
    r.selectNodeContents(document.getElementById(b.dataset.copy));
    const s = window.getSelection();
    s.removeAllRanges();
    s.addRange(r);
    if (document.execCommand("copy")) done();
  }
});
