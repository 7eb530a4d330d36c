"""The lightbox: one result over the grid, at any scroll position and width.

It replaces the side panel that opened off-screen. The server renders it (`wrap`) around the
detail view; the browser side (`JS`) moves focus in and out of it, closes it on Esc, steps with
←/→ and swipes, and does the two actions that never need the server: copy the path, and put the
item into the search box as `id:ITEM + ` so the user types the words to combine it with.
"""

from __future__ import annotations

import html
from typing import Any

from clipsearch.ui.names import item_title

CSS = """
.cs-lightbox { position: fixed; inset: 0; z-index: 1000; display: flex; align-items: center;
               justify-content: center; }
.cs-lb-backdrop { position: absolute; inset: 0; background: rgba(0, 0, 0, 0.72); }
.cs-lb-panel { position: relative; width: min(1100px, 96vw); max-height: 94vh; overflow: auto;
               background: var(--background-fill-primary); color: var(--body-text-color);
               border-radius: 10px; padding: 10px 14px 14px; box-shadow: 0 8px 40px rgba(0, 0, 0, 0.5); }
.cs-lb-bar { display: flex; align-items: center; gap: 8px; margin-bottom: 8px; }
.cs-lb-title { flex: 1; font-weight: 600; overflow: hidden; text-overflow: ellipsis; white-space: nowrap; }
.cs-lb-pos { color: var(--body-text-color); font-size: 13px; white-space: nowrap; }
.cs-lb-bar button, .cs-lb-actions button, .cs-lb-actions a {
  border: 1px solid var(--border-color-primary); border-radius: 6px; padding: 4px 10px; cursor: pointer;
  background: var(--button-secondary-background-fill); color: var(--body-text-color); font-size: 14px;
  text-decoration: none; }
.cs-lb-bar button:disabled { opacity: 0.35; cursor: default; }
.cs-lb-actions { display: flex; flex-wrap: wrap; gap: 8px; margin-top: 10px; }
.cs-lightbox .cs-detail img { max-height: 70vh; }
.cs-lightbox .cs-detail video { max-height: 70vh; }
.cs-lightbox :focus-visible, .cs-card:focus-visible, .cs-tile:focus-visible {
  outline: 3px solid var(--color-accent); outline-offset: 2px; }
html.cs-lb-open { overflow: hidden; }
@media (max-width: 640px) {
  .cs-lb-panel { width: 100vw; max-height: 100vh; height: 100vh; border-radius: 0; padding: 8px; }
}
"""

# Installed by the detail component's js_on_load (`element` is that component).
JS = """
const lbFocus = () => {
  const lb = element.querySelector('.cs-lightbox');
  if (lb) {
    document.documentElement.classList.add('cs-lb-open');
    element.dataset.last = lb.dataset.index;
    const want = lb.querySelector(element.dataset.want || '.cs-lb-close');
    delete element.dataset.want;
    const target = want && !want.disabled ? want : lb.querySelector('.cs-lb-close');
    if (target && !lb.contains(document.activeElement)) target.focus({preventScroll: true});
    return;
  }
  document.documentElement.classList.remove('cs-lb-open');
  const i = element.dataset.last;
  delete element.dataset.last;
  if (i === undefined) return;
  const card = document.querySelector(
    `#cs-results .cs-card[data-index='${i}'], #cs-results .cs-tile[data-index='${i}']`);
  if (card) card.focus();
};
lbFocus();
watch('value', lbFocus);
const lbPress = (sel) => {
  const b = element.querySelector('.cs-lightbox ' + sel);
  if (!b || b.disabled) return false;
  element.dataset.want = sel;
  b.click();
  return true;
};
const inField = (t) => t && (t.isContentEditable
  || ['INPUT', 'TEXTAREA', 'SELECT', 'VIDEO'].includes(t.tagName));
document.addEventListener('keydown', (ev) => {
  const lb = element.querySelector('.cs-lightbox');
  if (!lb) return;
  const step = !inField(ev.target) && {ArrowRight: '.cs-lb-next', ArrowLeft: '.cs-lb-prev'}[ev.key];
  if (ev.key === 'Escape') { if (lbPress('.cs-lb-close')) ev.preventDefault(); }
  else if (step) { if (lbPress(step)) ev.preventDefault(); }
  else if (ev.key === 'Tab') {  // keep focus inside the dialog
    const f = [...lb.querySelectorAll('button:not([disabled]), a[href], video, [tabindex="0"]')];
    if (!f.length) return;
    const first = f[0], last = f[f.length - 1];
    if (ev.shiftKey && (document.activeElement === first || !lb.contains(document.activeElement))) {
      ev.preventDefault(); last.focus();
    } else if (!ev.shiftKey && (document.activeElement === last || !lb.contains(document.activeElement))) {
      ev.preventDefault(); first.focus();
    }
  }
});
let touch = null;
element.addEventListener('touchstart', (ev) => {
  if (ev.touches.length === 1) touch = [ev.touches[0].clientX, ev.touches[0].clientY];
}, {passive: true});
element.addEventListener('touchend', (ev) => {
  if (!touch || !ev.changedTouches.length) return;
  const dx = ev.changedTouches[0].clientX - touch[0], dy = ev.changedTouches[0].clientY - touch[1];
  touch = null;
  if (Math.abs(dx) > 50 && Math.abs(dx) > 1.5 * Math.abs(dy)) lbPress(dx < 0 ? '.cs-lb-next' : '.cs-lb-prev');
}, {passive: true});
element.addEventListener('click', (ev) => {
  const b = ev.target.closest('[data-client]');
  if (!b || !element.contains(b)) return;
  ev.preventDefault();
  if (b.dataset.client === 'copy') {
    const text = b.dataset.path;
    const fallback = () => {
      const t = document.createElement('textarea');
      t.value = text; t.setAttribute('readonly', ''); t.style.position = 'fixed'; t.style.opacity = '0';
      document.body.appendChild(t); t.select();
      try { document.execCommand('copy'); } finally { t.remove(); }
    };
    const done = () => { b.textContent = 'Copied'; b.dataset.copied = text; };
    if (navigator.clipboard && window.isSecureContext) {
      navigator.clipboard.writeText(text).then(done, () => { fallback(); done(); });
    } else { fallback(); done(); }
  } else if (b.dataset.client === 'combine') {
    const box = document.querySelector('#cs-query textarea, #cs-query input');
    if (!box) return;
    const rest = box.value.trim().replace(/^id:[0-9a-f]+\\s*\\+\\s*/i, '');
    box.value = `id:${b.dataset.id} + ` + rest;
    box.dispatchEvent(new Event('input', {bubbles: true}));
    delete element.dataset.last;  // focus goes to the search box, not back to the card
    lbPress('.cs-lb-close');
    box.focus();
    box.setSelectionRange(box.value.length, box.value.length);
  }
});
"""

# Installed by the grid's js_on_load: Enter or Space on a focused card opens it; `/` focuses
# the search box from anywhere but a text field.
CARD_KEYS_JS = """
element.addEventListener('keydown', (ev) => {
  const c = ev.target.closest ? ev.target.closest('.cs-card, .cs-tile') : null;
  if (!c || ev.target !== c || !(ev.key === 'Enter' || ev.key === ' ')) return;
  ev.preventDefault();
  trigger('click', {action: 'open', index: parseInt(c.dataset.index || '-1', 10)});
});
if (!window.__csSlash) {
  window.__csSlash = true;
  document.addEventListener('keydown', (ev) => {
    const t = ev.target;
    if (ev.key !== '/' || ev.ctrlKey || ev.metaKey || ev.altKey) return;
    if (t && (t.isContentEditable || ['INPUT', 'TEXTAREA', 'SELECT'].includes(t.tagName))) return;
    if (document.querySelector('#cs-detail .cs-lightbox')) return;
    const box = document.querySelector('#cs-query textarea, #cs-query input');
    if (box) { ev.preventDefault(); box.focus(); box.select(); }
  });
}
"""


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def wrap(detail: str, hit: dict[str, Any], index: int, total: int) -> str:
    """The lightbox around one result's detail view: title, position, previous/next, close,
    and the actions that work on the browser side (combine with text, copy path)."""
    title = item_title(hit)
    prev_off = " disabled" if index <= 0 else ""
    next_off = " disabled" if index >= total - 1 else ""
    actions = [f"<button data-client='copy' data-path='{_e(hit['source'])}' class='cs-lb-copy'>"
               "Copy path</button>"]
    if hit.get("id"):
        actions.insert(0, f"<button data-client='combine' data-id='{_e(hit['id'])}' class='cs-lb-combine'"
                          " title='put this item in the search box; type words to add'>"
                          "Search with this plus text</button>")
    return (f"<div class='cs-lightbox' role='dialog' aria-modal='true' aria-label='{_e(title)}'"
            f" data-index='{index}'><div class='cs-lb-backdrop' data-action='close'></div>"
            f"<div class='cs-lb-panel'><div class='cs-lb-bar'>"
            f"<span class='cs-lb-title' title='{_e(hit['source'])}'>"
            f"{_e(title)}</span><span class='cs-lb-pos'>{index + 1} of {total}</span>"
            f"<button class='cs-lb-prev' data-action='open' data-index='{index - 1}'{prev_off}"
            f" aria-label='Previous result' title='Previous (←)'>‹</button>"
            f"<button class='cs-lb-next' data-action='open' data-index='{index + 1}'{next_off}"
            f" aria-label='Next result' title='Next (→)'>›</button>"
            f"<button class='cs-lb-close' data-action='close' aria-label='Close'"
            f" title='Close (Esc)'>×</button>"
            f"</div>{detail}<div class='cs-lb-actions'>{''.join(actions)}</div></div></div>")
