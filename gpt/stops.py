"""
Stop strings and the text of a sequence as its tokens arrive: sample.py and serve.py both end a completion at the
first stop string and stream the text that has become final, so the rule lives here once.

A BPE token can hold half of a multi-byte character, and the last tokens of a text can be the start of a stop
string that the next token completes: streamed text holds both back until they are known, so what was printed or
sent never has to be taken back.
"""


def find_stop(text, stops):
    """Where the first stop string found in text starts, or -1 (the earliest one, whichever it is)."""
    return min((text.find(s) for s in stops if s in text), default=-1)


def cut_at_stop(text, stops):
    """text up to the first stop string (all of it when there is none)."""
    cut = find_stop(text, stops)
    return text if cut < 0 else text[:cut]


class StopText:
    """One sequence's text, token by token: push returns the text that became final since the last push, and
    stopped says a stop string ended it (the text before the stop string is kept, the string itself is not).
    The whole continuation is decoded at every push, so characters split across tokens come out whole."""

    def __init__(self, decode, stops):
        self.decode, self.stops = decode, list(stops)
        self.tokens, self.sent, self.stopped = [], 0, False

    def push(self, token=None, final=False):
        """Take one generated token (None: no text, e.g. an end token) and return the text now final. final=True:
        the sequence has ended, so nothing is held back."""
        if token is not None:
            self.tokens.append(token)
        text = self.decode(self.tokens)
        cut = find_stop(text, self.stops)
        if cut >= 0:
            text, self.stopped, final = text[:cut], True, True
        end = len(text)
        if not final:  # what may be the start of a stop string, or a character's first bytes, waits
            end -= max((k for s in self.stops for k in range(1, len(s)) if text.endswith(s[:k])), default=0)
            while end > self.sent and text[end - 1] == '\ufffd':
                end -= 1
        delta, self.sent = text[self.sent:end], max(self.sent, end)
        return delta
