"""The page appears once Gradio has drawn it, so nothing jumps while it loads.

Gradio mounts its components one module at a time: the navigation bar pushes its own loader
down, the Kind buttons and the image box arrive after the text boxes, and every late arrival
moves what was drawn before. `HEAD` (in the page's <head>, so it applies before anything is
drawn) keeps the app invisible, with a fixed "Loading…" in its place, until the boxes of the
page stop moving; then it shows the page whole. A page that never settles is shown anyway
after `MAX_WAIT_MS`.
"""

from __future__ import annotations

SETTLED_SAMPLES = 3  # the layout is the same in this many samples in a row...
SAMPLE_MS = 80  # ...taken this far apart
MAX_WAIT_MS = 6000

HEAD = f"""
<style>
html:not(.cs-ready) gradio-app {{ visibility: hidden; }}
html:not(.cs-ready) body::after {{ content: "Loading…"; position: fixed; top: 45%; left: 0; right: 0;
  text-align: center; font: 16px system-ui, sans-serif; color: #666; }}
</style>
<script>
(() => {{
  const root = document.documentElement;
  const show = () => root.classList.add('cs-ready');
  setTimeout(show, {MAX_WAIT_MS});
  let last = '', same = 0;
  const sample = () => {{
    if (root.classList.contains('cs-ready')) return;
    const app = document.querySelector('gradio-app');
    const blocks = app ? app.querySelectorAll('.block, .form, .row, .column, nav') : [];
    const busy = app && app.querySelector('.wrap.full:not(.hide), .pending');
    let now = '';
    for (const b of blocks) {{
      const r = b.getBoundingClientRect();
      now += `${{r.x | 0}},${{r.y | 0}},${{r.width | 0}},${{r.height | 0}};`;
    }}
    same = (blocks.length && !busy && now === last) ? same + 1 : 0;
    last = now;
    if (same >= {SETTLED_SAMPLES}) show(); else setTimeout(sample, {SAMPLE_MS});
  }};
  setTimeout(sample, {SAMPLE_MS});
}})();
</script>
"""
