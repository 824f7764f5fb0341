"""gpt/stops.py: the stop-string matcher and the streamed text sample.py and serve.py share."""
import tiktoken

from gpt.stops import StopText, cut_at_stop, find_stop


def stream(text_obj, tokens):
    return [text_obj.push(t) for t in tokens]


def test_find_and_cut_take_the_earliest_stop():
    assert find_stop('abc\n\nEND', ['END', '\n\n']) == 3
    assert cut_at_stop('abc\n\nEND', ['END', '\n\n']) == 'abc'
    assert cut_at_stop('no stop here', ['END']) == 'no stop here' and find_stop('x', []) == -1


def test_a_stop_strings_start_is_held_back_until_known():
    chars = list('ab\n\ncd')
    text = StopText(lambda ids: ''.join(chars[i] for i in ids), ['\n\n'])
    deltas = stream(text, range(len(chars)))
    # 'a', 'b', then '\n' might open the stop string: nothing until the next token shows it does
    assert deltas[:4] == ['a', 'b', '', ''] and text.stopped
    assert ''.join(deltas) == 'ab'


def test_a_held_prefix_that_is_not_a_stop_is_released():
    chars = list('a\nb')
    text = StopText(lambda ids: ''.join(chars[i] for i in ids), ['\n\n'])
    assert stream(text, range(3)) == ['a', '', '\nb'] and not text.stopped
    assert text.push(final=True) == ''


def test_split_characters_come_out_whole_and_final_releases_the_rest():
    enc = tiktoken.get_encoding('gpt2')
    ids = enc.encode('é 😀 ok')  # the emoji is split across byte-level tokens
    text = StopText(enc.decode, ['ok?'])
    deltas = stream(text, ids)
    assert all('\ufffd' not in d for d in deltas)
    assert ''.join(deltas) + text.push(final=True) == 'é 😀 ok'
