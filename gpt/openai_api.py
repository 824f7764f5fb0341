"""
OpenAI's API as serve.py speaks it: the error object, the checks of a request's fields, which of OpenAI's (and
vLLM's) options a request may use, and chat messages turned into gpt/chat.py's turns. No HTTP and no model here:
serve.py calls these with the body it read, and encodes and decodes itself.

Every option of OpenAI's completions and chat APIs either works as OpenAI defines it or is a 400 that names it; an
unknown key is a 400 too (as OpenAI answers "Unrecognized request argument"), so a typo is never silently ignored.
"""

import json
import math
from dataclasses import dataclass
from typing import Optional

from gpt.sampling import SamplingParams


class ApiError(Exception):
    """A request the server refuses: answered as OpenAI's error JSON with this status."""

    def __init__(self, status, message, param=None, code=None, headers=None):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.headers = status, message, param, code, headers


ERROR_TYPES = {400: 'invalid_request_error', 401: 'invalid_request_error', 404: 'invalid_request_error',
               405: 'invalid_request_error', 413: 'invalid_request_error', 415: 'invalid_request_error',
               421: 'invalid_request_error', 429: 'rate_limit_error', 500: 'server_error', 503: 'server_error'}


def error_body(status, message, param=None, code=None):
    """OpenAI's error object: the openai client raises the matching APIStatusError with this message."""
    return {'error': {'message': message, 'type': ERROR_TYPES.get(status, 'invalid_request_error'),
                      'param': param, 'code': code}}


def reject_constant(name):
    raise ValueError(f"{name} is not a number JSON allows")


def parse_json(body):
    try:
        data = json.loads(body, parse_constant=reject_constant)
    except (ValueError, RecursionError) as e:
        raise ApiError(400, f"the request body is not valid JSON ({str(e)[:200]})") from None
    if not isinstance(data, dict):
        raise ApiError(400, f"the request body must be a JSON object, got {type(data).__name__}")
    return data


KINDS = {'int': 'an integer', 'number': 'a number', 'bool': 'true or false', 'str': 'a string',
         'dict': 'an object', 'list': 'a list'}


def field(body, key, kind, default=None, low=None, high=None, low_open=False):
    """body[key] checked to be of a kind and (numbers) in [low, high] (low excluded with low_open); null or
    absent gives default."""
    v = body.get(key)
    if v is None:
        return default
    ok = {'int': isinstance(v, int) and not isinstance(v, bool),
          'number': isinstance(v, (int, float)) and not isinstance(v, bool),
          'bool': isinstance(v, bool), 'str': isinstance(v, str), 'dict': isinstance(v, dict),
          'list': isinstance(v, list)}[kind]
    if not ok:
        raise ApiError(400, f"'{key}' must be {KINDS[kind]}, got {json.dumps(v)[:60]}", param=key)
    if kind in ('int', 'number'):
        bad_low = low is not None and (v <= low if low_open else v < low)
        if bad_low or (high is not None and v > high) or not math.isfinite(v):
            lo = '' if low is None else f"{'>' if low_open else '>='} {low}"
            hi = '' if high is None else f"<= {high}"
            raise ApiError(400, f"'{key}' must be {' and '.join(x for x in (lo, hi) if x)}, got {v}", param=key)
    return v


def check_ids(ids, vocab_size, param='prompt'):
    if not all(isinstance(t, int) and not isinstance(t, bool) for t in ids):
        raise ApiError(400, f"'{param}' must hold integer token ids", param=param)
    if any(not 0 <= t < vocab_size for t in ids):
        raise ApiError(400, f"token ids in '{param}' must be in [0, {vocab_size})", param=param)
    return ids


# ----------------------------------------------------------------------------- which options a request may use

# both endpoints: OpenAI's shared options and vLLM's sampling extras (top_k ... include_stop_str_in_output)
COMMON = {'model', 'n', 'temperature', 'top_p', 'seed', 'stop', 'stream', 'stream_options', 'max_tokens',
          'presence_penalty', 'frequency_penalty', 'logit_bias', 'logprobs', 'user',
          'top_k', 'min_p', 'repetition_penalty', 'min_tokens', 'ignore_eos', 'stop_token_ids',
          'include_stop_str_in_output'}
KEYS = {'completion': COMMON | {'prompt', 'best_of', 'echo', 'suffix'},
        'chat': COMMON | {'messages', 'max_completion_tokens', 'top_logprobs', 'response_format', 'tools',
                          'tool_choice', 'functions', 'function_call', 'parallel_tool_calls', 'audio', 'modalities',
                          'prediction', 'reasoning_effort', 'metadata', 'store', 'service_tier',
                          'web_search_options', 'verbosity', 'prompt_cache_key', 'safety_identifier'}}

# OpenAI options this server cannot honour: (the values that are fine, why not). A value outside them is a 400
# naming the option (absent or null is always fine).
UNSUPPORTED = {
    'best_of': ((1,), "use n"),
    'logit_bias': (({},), "biasing tokens is not implemented"),
    'suffix': (('',), "insertion is not implemented"),
    'response_format': (({'type': 'text'},), "constrained decoding (json_object, json_schema) is not implemented; "
                                             "only {\"type\": \"text\"}"),
    'tools': ((), "this model does not call tools"),
    'tool_choice': ((), "this model does not call tools"),
    'functions': ((), "this model does not call functions"),
    'function_call': ((), "this model does not call functions"),
    'parallel_tool_calls': ((), "this model does not call tools"),
    'audio': ((), "text only"),
    'modalities': ((['text'],), "text only"),
    'prediction': ((), "predicted outputs are not implemented"),
    'reasoning_effort': ((), "this is not a reasoning model"),
    'web_search_options': ((), "there is no web search"),
    'verbosity': ((), "the model's verbosity cannot be set"),
    'store': ((False,), "completions are not stored"),
    'service_tier': (('auto', 'default'), "there is one tier"),
}


def check_keys(body, kind):
    """400 for an unknown option, or a known one set to what this server cannot do; type checks of the options
    that have no effect on the output by OpenAI's own definition (user, metadata, ...)."""
    for key in body:
        if key not in KEYS[kind]:
            raise ApiError(400, f"unrecognized request argument '{key}' (POST /v1/"
                                f"{'chat/' if kind == 'chat' else ''}completions)", param=key)
    for key, (fine, why) in UNSUPPORTED.items():
        v = body.get(key)
        if v is not None and not any(type(v) is type(f) and v == f for f in fine):
            raise ApiError(400, f"'{key}' is not supported by this server ({why}), got {json.dumps(v)[:60]}",
                           param=key)
    for key in ('user', 'prompt_cache_key', 'safety_identifier'):
        field(body, key, 'str')
    field(body, 'metadata', 'dict')


@dataclass
class Options:
    """What a completions or chat request asks for, checked."""
    params: SamplingParams
    stops: list             # stop strings
    stop_token_ids: list    # more ids that end a choice (vLLM)
    ignore_eos: bool        # keep going past the model's end token (vLLM)
    include_stop: bool      # keep the stop string that ended the text (vLLM's include_stop_str_in_output)
    n: int
    stream: bool
    include_usage: bool
    echo: bool
    logprobs: Optional[int]  # the top tokens to report with each token's logprob (0: its own alone); None: no logprobs


MAX_LOGPROBS = 20  # the most top tokens a request may ask for (OpenAI's completions allow 5, its chat 20; vLLM 20)


def logprobs_option(body, kind):
    """How many top tokens each token's logprob comes with, or None for no logprobs: completions' logprobs (an
    integer); chat's logprobs (true or false) and top_logprobs (which needs logprobs: true, as OpenAI's)."""
    if kind != 'chat':
        return field(body, 'logprobs', 'int', None, low=0, high=MAX_LOGPROBS)
    wanted = field(body, 'logprobs', 'bool', False)
    top = field(body, 'top_logprobs', 'int', None, low=0, high=MAX_LOGPROBS)
    if top and not wanted:
        raise ApiError(400, f"'top_logprobs' ({top}) needs 'logprobs': true", param='top_logprobs')
    return (top or 0) if wanted else None


def options(body, kind, max_n, vocab_size):
    """The request's Options; a 400 naming the first option that is wrong or unsupported."""
    check_keys(body, kind)
    n = field(body, 'n', 'int', 1, low=1)
    if n > max_n:
        raise ApiError(400, f"'n' is {n}; this server allows at most {max_n} choices per request", param='n')
    stop = body.get('stop')
    stops = [stop] if isinstance(stop, str) else stop if stop is not None else []
    if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops) or len(stops) > 4:
        raise ApiError(400, f"'stop' must be a string or a list of up to 4 strings, got {json.dumps(stop)[:60]}",
                       param='stop')
    seed = field(body, 'seed', 'int', None)
    if seed is not None and not -2 ** 63 <= seed < 2 ** 63:
        raise ApiError(400, f"'seed' must fit in 64 bits, got {seed}", param='seed')
    top_k = field(body, 'top_k', 'int', None, low=-1)
    params = SamplingParams(temperature=field(body, 'temperature', 'number', 1.0, low=0, high=2),
                            top_k=None if top_k in (None, -1, 0) else top_k,
                            top_p=field(body, 'top_p', 'number', None, low=0, high=1, low_open=True),
                            min_p=field(body, 'min_p', 'number', None, low=0, high=1),
                            repetition_penalty=field(body, 'repetition_penalty', 'number', 1.0, low=0, low_open=True),
                            seed=seed,
                            presence_penalty=field(body, 'presence_penalty', 'number', 0.0, low=-2, high=2),
                            frequency_penalty=field(body, 'frequency_penalty', 'number', 0.0, low=-2, high=2),
                            min_tokens=field(body, 'min_tokens', 'int', 0, low=0))
    try:
        params.check()
    except ValueError as e:
        raise ApiError(400, str(e)) from None
    stop_token_ids = check_ids(field(body, 'stop_token_ids', 'list', []), vocab_size, 'stop_token_ids')
    stream = field(body, 'stream', 'bool', False)
    stream_options = field(body, 'stream_options', 'dict', None)
    if stream_options is not None and not stream:
        raise ApiError(400, "'stream_options' is only allowed when 'stream' is true", param='stream_options')
    for key in stream_options or {}:
        if key != 'include_usage':
            raise ApiError(400, f"unrecognized stream_options argument '{key}' (only include_usage)",
                           param='stream_options')
    return Options(params, [s for s in stops if s], stop_token_ids, field(body, 'ignore_eos', 'bool', False),
                   field(body, 'include_stop_str_in_output', 'bool', False), n, stream,
                   field(stream_options or {}, 'include_usage', 'bool', False),
                   field(body, 'echo', 'bool', False), logprobs_option(body, kind))


def max_tokens_key(body):
    """The chat API's newer name for max_tokens, where a request uses it."""
    return 'max_completion_tokens' if body.get('max_completion_tokens') is not None else 'max_tokens'


# ----------------------------------------------------------------------------- prompts and messages

def prompt_parts(body):
    """A completions request's prompts: strings or token id lists (a string, a list of strings, a list of ids, or
    a list of such lists)."""
    p = body.get('prompt')
    ints = lambda x: isinstance(x, list) and all(isinstance(t, int) and not isinstance(t, bool) for t in x)
    if isinstance(p, str):
        return [p]
    if isinstance(p, list) and p and (ints(p) or all(isinstance(x, str) for x in p) or all(ints(x) for x in p)):
        return [p] if ints(p) else p
    raise ApiError(400, "'prompt' must be a string, a list of strings, or token ids (a list of integers, or a "
                        "list of such lists)", param='prompt')


def message_text(i, m):
    content = m.get('content')
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # content parts: only text ones
        if all(isinstance(p, dict) and p.get('type') == 'text' and isinstance(p.get('text'), str) for p in content):
            return ''.join(p['text'] for p in content)
        raise ApiError(400, f"messages[{i}].content: only text parts are supported", param='messages')
    raise ApiError(400, f"messages[{i}].content must be a string, got {json.dumps(content)[:60]}", param='messages')


def chat_turns(messages):
    """[(role, text)] in gpt/chat.py's template from OpenAI messages. The template has user and assistant turns
    only: a system (or developer) message is user text, and messages of one role in a row are one turn, their texts
    joined by a blank line. A conversation may end with the assistant's message: the answer continues it."""
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, "'messages' must be a non-empty list of {role, content} objects", param='messages')
    turns = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise ApiError(400, f"messages[{i}] must be an object with role and content", param='messages')
        role = m.get('role')
        if role in ('tool', 'function') or m.get('tool_calls') or m.get('function_call'):
            raise ApiError(400, f"messages[{i}]: tool and function calls are not supported by this server",
                           param='messages')
        if role not in ('system', 'developer', 'user', 'assistant'):
            raise ApiError(400, f"messages[{i}].role must be 'system', 'developer', 'user' or 'assistant', got "
                                f"{json.dumps(role)[:40]}", param='messages')
        role, text = ('assistant' if role == 'assistant' else 'user'), message_text(i, m)
        if turns and turns[-1][0] == role:
            turns[-1] = (role, turns[-1][1] + '\n\n' + text)
        else:
            turns.append((role, text))
    return turns
