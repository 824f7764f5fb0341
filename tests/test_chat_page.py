"""The chat page (chat.html, served by serve.py at /) in headless Chromium, driven by Playwright against the real
server on a tiny chat model of a 64-token context, so a conversation outgrows it in two turns. Nothing here waits
for time to pass: each step waits for a state of the page (its body's data-state, a message's data-state) with a
generous timeout, requests are greedy or seeded, and what the page sends and shows is compared with what the
server answers to the same request, unstreamed. Playwright drives the system's Chromium (Debian: apt-get install
chromium; never `playwright install`)."""
import os
import re
import shutil

import pytest
import torch
from conftest import Server, run, tiny

from gpt import chat, rl
from gpt.checkpoint import save_checkpoint
from gpt.loading import load_model

sync_api = pytest.importorskip('playwright.sync_api', reason="playwright is a test requirement (requirements-test.txt)")
pytest.importorskip('httpx')
CHROMIUM = os.environ.get('CHROMIUM') or shutil.which('chromium') or shutil.which('chromium-browser')
pytestmark = pytest.mark.skipif(not CHROMIUM, reason="no chromium on PATH (Debian: apt-get install chromium; or set "
                                                     "CHROMIUM)")
CONTEXT = 64
WAIT = 60_000  # ms: for any state of the page (a loaded machine is slow, never wrong)
CHAT = '/v1/chat/completions'


@pytest.fixture(scope='module')
def server(tmp_path_factory, char_data):
    """serve.py on a briefly trained character model with align.py's chat tokens added (as tests/test_serve.py's
    chat model, with a 64-token context): its answers are not good, only deterministic."""
    d = tmp_path_factory.mktemp('chat_page')
    run('train.py', *tiny(block_size=CONTEXT, batch_size=4, max_iters=30, eval_interval=30, eval_iters=2, plot=False,
                          learning_rate=1e-2, warmup_iters=5, lr_decay_iters=30),
        f'--data_dir={char_data}', f'--out_dir={d / "base"}')
    model, meta, _ = load_model('resume', str(d / 'base'), 'best.pt')
    meta = chat.chat_meta(meta)
    torch.manual_seed(0)
    (d / 'chat').mkdir()
    save_checkpoint(rl.policy_checkpoint(chat.grow_vocab(model, meta), meta, {}, 0), str(d / 'chat' / 'ckpt.pt'))
    s = Server(d, f'--out_dir={d / "chat"}', '--ckpt_name=ckpt.pt')
    yield s
    s.stop()


@pytest.fixture(scope='module')
def browser():
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=['--no-sandbox'])
        yield b
        b.close()


@pytest.fixture
def open_page(browser, server):
    """open_page(init_script=None): the page in a fresh context (its own localStorage, clipboard access), loaded;
    the test fails if the page's script throws."""
    contexts, errors = [], []

    def open_(init_script=None):
        context = browser.new_context(permissions=['clipboard-read', 'clipboard-write'],
                                      viewport={'width': 1100, 'height': 800})
        contexts.append(context)
        context.set_default_timeout(WAIT)
        sync_api.expect.set_options(timeout=WAIT)
        if init_script:
            context.add_init_script(init_script)
        page = context.new_page()
        page.on('pageerror', lambda e: errors.append(str(e)))
        page.goto(server.url + '/')
        page.wait_for_function("document.getElementById('model').textContent === 'chat' && "
                               "document.body.dataset.state === 'idle'")
        return page
    yield open_
    for c in contexts:
        c.close()
    assert not errors, errors  # (uncaught errors in the page's script)


def settings(page, **values):
    for k, v in values.items():
        page.fill(f'#{k}', str(v))


def answered(page, n):
    """Waits until the page is idle with n answers in the log (failing at once, with its reason, if a message failed
    instead)."""
    page.wait_for_function("n => document.body.dataset.state === 'idle' && (document.querySelector('.msg.failed') || "
                           "document.querySelectorAll('.msg.assistant[data-state=done]').length === n)", arg=n)
    failed = page.locator('.msg.failed .error')
    assert failed.count() == 0, failed.all_inner_texts()


def sending(page, action):
    """The body of the chat request that action (a callable) makes the page send."""
    with page.expect_request(lambda r: r.url.endswith(CHAT) and r.method == 'POST') as request:
        action()
    return request.value.post_data_json


def say(page, text):
    def type_and_send():
        page.fill('#input', text)
        page.press('#input', 'Enter')
    return sending(page, type_and_send)


def conversation(page):
    return page.evaluate("messages.map(m => ({role: m.role, content: m.content}))")


def unstreamed(server, body):
    """The server's answer to the same request, not streamed."""
    r = server.post(CHAT, {k: v for k, v in body.items() if k not in ('stream', 'stream_options')})
    assert r.status_code == 200, r.text
    return r.json()


def tokens(server, messages):
    return server.post('/tokenize', {'messages': messages}).json()['count']


def shows(page, i, text):
    """Message i of the log shows text: as typed for the user's, rendered by the page's markdown for answers."""
    return page.evaluate("([i, text]) => { const m = document.querySelector(`.msg[data-index='${i}']`); "
                         "const c = m.querySelector('.content'); return m.classList.contains('user') ? "
                         "c.textContent === text : c.innerHTML === renderMarkdown(text); }", [i, text])


def button(page, i, action):
    return page.locator(f".msg[data-index='{i}'] button[data-action={action}]")


def check_answer(page, server, body, system, max_tokens):
    """The request fits the context with max_tokens to spare and starts with the system prompt; it is the page's
    conversation with as few of the oldest turns left out as fit (one turn more would not), and the page says how
    many; the answer it shows is the unstreamed one's, with its tokens/s and the context it used."""
    convo = conversation(page)
    sent = body['messages']
    assert sent[0] == {'role': 'system', 'content': system}
    assert body['stream'] is True and body['stream_options'] == {'include_usage': True}
    assert body['max_tokens'] == max_tokens
    want = unstreamed(server, body)
    assert convo[-1] == {'role': 'assistant', 'content': want['choices'][0]['message']['content']}
    history = convo[:-1]
    first = len(history) - (len(sent) - 1)
    assert sent[1:] == history[first:] and sent[-1]['role'] == 'user'
    assert tokens(server, sent) + max_tokens <= CONTEXT
    if first:  # the turn before (a user message and its answer) would not have fitted
        earlier = max(i for i in range(first) if history[i]['role'] == 'user')
        assert tokens(server, sent[:1] + history[earlier:]) + max_tokens > CONTEXT
        note = page.locator('.left-out-note')
        sync_api.expect(note).to_contain_text(f"{first} older message{'s' if first > 1 else ''} left out")
        assert page.locator('.msg.left-out').count() == first
        sync_api.expect(page.locator(f".msg[data-index='{len(history)}'] .trimmed")).to_contain_text(
            f'{first} older message')
    else:
        assert page.locator('.left-out-note').count() == 0
    last = len(convo) - 1
    assert shows(page, last, convo[-1]['content'])
    usage = want['usage']
    meta = f".msg[data-index='{last}'] .meta"
    sync_api.expect(page.locator(meta + ' .context')).to_have_text(f"context {usage['total_tokens']}/{CONTEXT} tokens")
    sync_api.expect(page.locator(meta + ' .speed')).to_have_text(re.compile(r'^\d+\.\d tokens/s$'))
    sync_api.expect(page.locator(meta + ' .tokens')).to_have_text(
        re.compile(rf"^{usage['completion_tokens']} tokens? in \d+\.\d\d s$"))
    return first


def test_a_conversation_is_trimmed_to_fit_regenerated_edited_and_copied(open_page, server, tmp_path):
    page = open_page()
    system = 'Speak briefly.'
    # seeded samples (this model's greedy answers are blanks): the same request gives the same answer
    settings(page, temperature=1, seed=5, max_tokens=10, system=system)
    turns = ['Now, good sir.', 'What say you?', 'Speak again, I pray.', 'Wherefore, then?']
    left_out = []
    for n, text in enumerate(turns, 1):
        body = say(page, text)
        answered(page, n)
        assert body['messages'][-1] == {'role': 'user', 'content': text}
        left_out.append(check_answer(page, server, body, system, 10))
    assert left_out[0] == 0 and left_out[-1] > 0 and left_out == sorted(left_out)  # later turns needed trimming
    path = os.environ.get('OUT_SCREENSHOT') or str(tmp_path / 'chat.png')
    page.screenshot(path=path)
    assert os.path.getsize(path) > 1000

    # regenerate: the same request again, the same (seeded) answer in the same place; greedy, the greedy one
    before = conversation(page)
    last = len(before) - 1
    again = sending(page, lambda: button(page, last, 'regenerate').click())
    answered(page, len(turns))
    assert again == body and conversation(page) == before and shows(page, last, before[-1]['content'])
    assert button(page, last - 1, 'regenerate').count() == 0  # (only the last answer has one)
    settings(page, temperature=0)
    greedy = sending(page, lambda: button(page, last, 'regenerate').click())
    answered(page, len(turns))
    assert greedy == {**body, 'temperature': 0}
    check_answer(page, server, greedy, system, 10)
    assert conversation(page)[:-1] == before[:-1]
    settings(page, temperature=1)
    before = conversation(page)

    # edit the second question and send it again: the later turns go, the new question is answered
    button(page, 2, 'edit').click()
    page.fill(".msg[data-index='2'] .edit textarea", 'Speak, good lord.')
    edited = sending(page, lambda: button(page, 2, 'resend').click())
    answered(page, 2)
    convo = conversation(page)
    assert convo[:2] == before[:2] and convo[2] == {'role': 'user', 'content': 'Speak, good lord.'}
    assert len(convo) == 4 and page.locator('.msg').count() == 4
    assert edited['messages'][-1] == convo[2]
    check_answer(page, server, edited, system, 10)

    # copy puts a message's text (its markdown, not the rendering) in the clipboard
    button(page, 3, 'copy').click()
    page.wait_for_selector(".msg[data-index='3'] button[data-action=copy][data-copied='1']")
    assert page.evaluate('navigator.clipboard.readText()') == convo[3]['content']
    button(page, 0, 'copy').click()
    page.wait_for_selector(".msg[data-index='0'] button[data-action=copy][data-copied='1']")
    assert page.evaluate('navigator.clipboard.readText()') == turns[0]


def test_a_failed_message_stays_marked_with_retry_and_edit(open_page, server):
    page = open_page()
    settings(page, temperature=0, max_tokens=8)
    # the server refuses the first request (as a busy or broken one would): the question stays, marked, with Retry
    page.route('**' + CHAT, lambda route: route.fulfill(
        status=503, content_type='application/json', body='{"error": {"message": "down for a moment"}}'))
    say(page, 'Now')
    page.wait_for_selector(".msg.user.failed[data-index='0']")
    page.wait_for_function("document.body.dataset.state === 'idle'")
    sync_api.expect(page.locator(".msg[data-index='0'] .error")).to_have_text('not answered: down for a moment')
    assert conversation(page) == [{'role': 'user', 'content': 'Now'}] and page.locator('.msg').count() == 1
    page.unroute('**' + CHAT)
    body = sending(page, lambda: button(page, 0, 'retry').click())
    answered(page, 1)
    assert body['messages'] == [{'role': 'user', 'content': 'Now'}]
    assert page.locator('.msg.failed').count() == 0
    assert conversation(page)[1]['content'] == unstreamed(server, body)['choices'][0]['message']['content']

    # a question too long for the context on its own: the server's reason, kept on the message; edit it shorter
    long = 'Now is the winter of our discontent made glorious summer by this sun of York.'
    say(page, long)
    page.wait_for_selector(".msg.user.failed[data-index='2']")
    page.wait_for_function("document.body.dataset.state === 'idle'")
    sync_api.expect(page.locator(".msg[data-index='2'] .error")).to_contain_text(f"context ({CONTEXT} tokens)")
    assert conversation(page)[2] == {'role': 'user', 'content': long}
    button(page, 2, 'edit').click()
    page.fill(".msg[data-index='2'] .edit textarea", 'Now is the winter.')
    body = sending(page, lambda: button(page, 2, 'resend').click())
    answered(page, 2)
    assert body['messages'][-1] == {'role': 'user', 'content': 'Now is the winter.'}
    assert page.locator('.msg.failed').count() == 0 and len(conversation(page)) == 4


# hold() arms the next chat stream to stop after its first event with text until the test calls releaseStream():
# the page must show that text while the answer is still open (window.passed: the text let through so far).
# The page's Stop (its fetch's signal) ends a held stream as it ends a real one.
HOLD = """(() => {
  const realFetch = window.fetch, encoder = new TextEncoder();
  window.hold = () => {
    window.held = new Promise((resolve) => window.releaseStream = resolve);
    window.holding = true;
    window.passed = '';
  };
  window.hold();
  window.fetch = async (url, init) => {
    const response = await realFetch(url, init);
    if (!String(url).endsWith('/v1/chat/completions') || !response.ok) return response;
    const reader = response.body.getReader(), decoder = new TextDecoder();
    let buffer = '', holding = window.holding, out;
    window.holding = false;
    init?.signal?.addEventListener('abort', () => {
      reader.cancel().catch(() => {});
      out.error(new DOMException('stopped', 'AbortError'));
    });
    const body = new ReadableStream({ start(c) { out = c; }, async pull() {
      for (;;) {
        const end = buffer.indexOf('\\n\\n');
        if (end >= 0) {  // one event at a time
          const event = buffer.slice(0, end + 2);
          buffer = buffer.slice(end + 2);
          const data = event.startsWith('data: {') ? JSON.parse(event.slice(6)) : null;
          const text = (data?.choices || []).map((c) => c.delta?.content || '').join('');
          window.passed += text;
          out.enqueue(encoder.encode(event));
          if (holding && text) { holding = false; await window.held; }
          return;
        }
        const { value, done } = await reader.read();
        if (done) { out.close(); return; }
        buffer += decoder.decode(value, { stream: true });
      }
    } });
    return new Response(body, { status: response.status, headers: response.headers });
  };
})();"""

SHOWS_PASSED = ("i => window.passed !== '' && document.querySelector(`.msg[data-index='${i}']`).dataset.state === "
                "'streaming' && document.querySelector(`.msg[data-index='${i}'] .content`).innerHTML === "
                "renderMarkdown(window.passed)")


def test_the_answer_shows_as_it_streams_equals_the_seeded_sample_and_stops(open_page, server):
    want = server.client().chat.completions.create(
        model='chat', messages=[{'role': 'user', 'content': 'Now'}], max_tokens=40, temperature=1, seed=5)
    want = want.choices[0].message.content
    assert want.strip()  # (a sampled answer: text to see, not only blanks)
    page = open_page(init_script=HOLD)
    settings(page, temperature=1, max_tokens=40, seed=5)
    body = say(page, 'Now')
    assert body['seed'] == 5 and body['temperature'] == 1 and 'system' not in [m['role'] for m in body['messages']]
    # held after the first text: shown (rendered) while the answer is open, Stop offered, no stats yet
    page.wait_for_function(SHOWS_PASSED, arg=1)
    assert want.startswith(page.evaluate('window.passed'))
    assert page.is_enabled('#stop') and page.locator('.msg.assistant .speed').count() == 0
    page.evaluate('releaseStream()')
    answered(page, 1)
    assert conversation(page)[1]['content'] == want and shows(page, 1, want)
    sync_api.expect(page.locator('.msg.assistant .speed')).to_have_text(re.compile(r'tokens/s$'))

    # Stop while it streams: what came stays, marked stopped, as the conversation's answer; Regenerate replaces it
    page.evaluate('hold()')
    say(page, 'Speak on.')
    page.wait_for_function(SHOWS_PASSED, arg=3)
    page.click('#stop')
    page.wait_for_function("document.body.dataset.state === 'idle' && "
                           "document.querySelector(`.msg[data-index='3']`).dataset.state === 'stopped'")
    partial = page.evaluate('window.passed')
    assert conversation(page)[3] == {'role': 'assistant', 'content': partial} and shows(page, 3, partial)
    sync_api.expect(page.locator(".msg[data-index='3'] .finish")).to_have_text('stopped')
    body = sending(page, lambda: button(page, 3, 'regenerate').click())
    answered(page, 2)
    sent = body['messages']
    assert sent[-1] == {'role': 'user', 'content': 'Speak on.'} and sent == conversation(page)[3 - len(sent):3]
    assert conversation(page)[3]['content'] == unstreamed(server, body)['choices'][0]['message']['content']


HOSTILE = '<img src=x onerror=alert(1)>**b** `c` ```\n<script>x</script>\n```'


def test_the_markdown_renderer_never_makes_the_models_html(open_page):
    page = open_page()
    got = page.evaluate("""(text) => {
        const div = document.createElement('div');
        div.innerHTML = renderMarkdown(text);
        const tags = [...div.querySelectorAll('*')].map((e) => e.tagName.toLowerCase());
        const attributes = [...div.querySelectorAll('*')].flatMap((e) => [...e.attributes].map((a) => a.name));
        return {tags, attributes, text: div.textContent,
                strong: [...div.querySelectorAll('strong')].map((e) => e.textContent),
                code: [...div.querySelectorAll(':not(pre) > code')].map((e) => e.textContent),
                pre: [...div.querySelectorAll('pre > code')].map((e) => e.textContent)};
    }""", HOSTILE + '\n\n- one *two*\n- `<b onclick=x>` _three_\n\n1. <a href="javascript:x">z</a>\n\n```\nopen')
    assert not {'img', 'script', 'a', 'b'} & set(got['tags']) and got['attributes'] == []
    assert {'p', 'strong', 'code', 'pre', 'ul', 'ol', 'li', 'em'} <= set(got['tags'])
    assert got['strong'] == ['b'] and got['code'] == ['c', '<b onclick=x>'] and got['pre'] == ['<script>x</script>',
                                                                                               'open']
    assert '<img src=x onerror=alert(1)>' in got['text'] and '<a href="javascript:x">z</a>' in got['text']
