"""Conversations through the model's chat template: token ids, which of them are the assistant's,
and the prompt each assistant turn is generated from.

A conversation is rendered with the tokenizer's own chat template
(``tokenizer.apply_chat_template``); a tokenizer without one gets :data:`PLAIN_TEMPLATE`. The
prompt format belongs to the model, not to the task. Rendering the conversation up to each user
message with the generation prompt, and up to each assistant message, cuts its text into pieces:
prompt, user message, prompt, answer, prompt, user message, ... An answer piece is the assistant
message as the template writes it, its end-of-turn marker included (trailing whitespace goes to
the next prompt piece). Templates must render a conversation as a prefix of its continuation,
as chat templates do; one that does not is refused with a :class:`TemplateError`.

Every piece is tokenised on its own (without added special tokens: the template writes them), so
the prompt of turn ``k`` is exactly the first ids of the whole conversation, as generation sees
them, and the assistant's tokens are exactly the answer pieces' tokens, the only ones that carry
loss. A conversation longer than the context drops its oldest turns, whole (the system message
stays), until it fits; a last turn that alone is too long keeps at most half the context for its
answer and shortens the user's message, as single-turn examples do (:func:`suite.data.encode`).
"""
from __future__ import annotations

from dataclasses import dataclass

from .data import Encoded, fit, token_ids
from .tasks import Example

#: the template of a tokenizer that has none (tiny-zh ships it as its own): BELLE's Human/Assistant
#: roles, each answer closed by the end-of-sequence token, so generation stops after one answer
PLAIN_TEMPLATE = (
    "{{ bos_token or '' }}"
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ message['content'] + '\\n' }}"
    "{% elif message['role'] == 'user' %}{{ 'Human: ' + message['content'] + '\\n' }}"
    "{% elif message['role'] == 'assistant' %}{{ 'Assistant: ' + message['content'] + eos_token + '\\n' }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ 'Assistant: ' }}{% endif %}"
)


class TemplateError(ValueError):
    """A chat template leitai cannot tell the assistant's tokens apart with."""


def template_of(tokenizer) -> str:
    """The chat template conversations are rendered with: the tokenizer's own (its default one,
    when it has several), else :data:`PLAIN_TEMPLATE`."""
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, dict):
        template = template.get("default")
    return template or PLAIN_TEMPLATE


def render(tokenizer, template: str, messages: list[dict], generation: bool) -> str:
    """The text of ``messages`` through ``template`` (with the generation prompt or not)."""
    return tokenizer.apply_chat_template(messages, chat_template=template, tokenize=False,
                                         add_generation_prompt=generation)


@dataclass
class Layout:
    """A conversation's rendered text and where its turns are in it (character offsets)."""

    text: str
    answers: list[tuple[int, int]]  # each assistant answer, its end-of-turn marker included
    users: list[tuple[int, int] | None]  # each user message's text, where the template wrote it verbatim

    def pieces(self, turns: int, answer: bool) -> list[tuple[str, str]]:
        """``(kind, text)`` pieces of the first ``turns`` turns, kinds ``prompt``, ``user`` and
        ``answer``; the last turn's answer only with ``answer`` (else the pieces end with the
        generation prompt)."""
        out, pos = [], 0
        for i in range(turns):
            start, end = self.answers[i]
            if self.users[i]:
                a, b = self.users[i]
                out += [("prompt", self.text[pos:a]), ("user", self.text[a:b]), ("prompt", self.text[b:start])]
            else:
                out.append(("prompt", self.text[pos:start]))
            if i < turns - 1 or answer:
                out.append(("answer", self.text[start:end]))
            pos = end
        return out


#: a user message no real conversation holds, to find where the template writes user messages
_PROBE = "LEITAI-PROBE-MESSAGE-3f9c1e"


def user_close(tokenizer, template: str) -> str | None:
    """What the template writes after a user message up to where the answer starts (its end of
    turn and the generation prompt); None when it does not write the message verbatim."""
    text = render(tokenizer, template, [{"role": "user", "content": _PROBE}], True)
    at = text.rfind(_PROBE)
    return text[at + len(_PROBE):] if at >= 0 else None


def layout(tokenizer, template: str, example: Example, first: int = 0, close: str | None = None) -> Layout:
    """Render ``example`` (without its ``first`` oldest turns) and find its turns in the text;
    ``close`` (:func:`user_close`) finds the user messages."""
    messages = [{"role": "system", "content": example.system}] if example.system else []
    before, answers, users = "", [], []
    for turn in example.all_turns[first:]:
        messages.append({"role": "user", "content": turn.user})
        prompt = render(tokenizer, template, messages, True)
        messages.append({"role": "assistant", "content": turn.output})
        full = render(tokenizer, template, messages, False)
        if not prompt.startswith(before) or not full.startswith(prompt):
            raise TemplateError(
                "the chat template does not render a conversation as the beginning of its continuation "
                "(with the generation prompt before each answer); leitai cannot find the assistant's tokens")
        end = len(prompt) + len(full[len(prompt):].rstrip())
        if end == len(prompt):
            raise TemplateError("the chat template writes no text for an assistant message")
        user = None
        if close is not None and turn.user and prompt.endswith(turn.user + close):
            at = len(prompt) - len(close) - len(turn.user)
            user = (at, at + len(turn.user)) if at >= (answers[-1][1] if answers else 0) else None
        users.append(user)
        answers.append((len(prompt), end))
        before = full
    return Layout(full, answers, users)


class ChatEncoder:
    """Token ids of conversations through one tokenizer's chat template (pieces tokenised once)."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.template = template_of(tokenizer)
        self.close = user_close(tokenizer, self.template)
        self._ids: dict[str, list[int]] = {}

    def tokenise(self, texts: list[str]) -> None:
        """Tokenise the texts not seen yet, in one batched call."""
        new = [t for t in dict.fromkeys(texts) if t not in self._ids]
        self._ids.update(zip(new, token_ids(self.tokenizer, new, False)))

    def ids(self, pieces: list[tuple[str, str]]) -> list[tuple[str, list[int]]]:
        self.tokenise([text for _, text in pieces])
        return [(kind, self._ids[text]) for kind, text in pieces]

    def layouts(self, examples: list[Example]) -> list[Layout]:
        """Every example's layout, their pieces tokenised in one batch."""
        out = [layout(self.tokenizer, self.template, ex, 0, self.close) for ex in examples]
        self.tokenise([text for lay in out for _, text in lay.pieces(len(lay.answers), True)])
        return out

    def training(self, example: Example, lay: Layout, max_len: int) -> tuple[Encoded, bool]:
        """The example for training (every answer's span), fitted to ``max_len``; whether it was cut."""
        n = len(example.all_turns)
        for first in range(n):
            if first:
                lay = layout(self.tokenizer, self.template, example, first, self.close)
            pieces = self.ids(lay.pieces(n - first, answer=True))
            if sum(len(ids) for _, ids in pieces) <= max_len:
                return _training_item(example.id, pieces), first > 0
        answer = pieces[-1][1]  # one turn left and still too long: cap the answer, shorten the message
        if len(answer) > max_len // 2:
            answer = answer[: max_len // 2 - 1] + answer[-1:]
        head, body, tail = _split_last_user(pieces[:-1])
        prompt, _ = fit(head, body, tail, max_len - len(answer))
        return Encoded(example.id, prompt, answer), True

    def prompts(self, example: Example, lay: Layout, max_prompt: int) -> list[tuple[list[int], bool]]:
        """The prompt of each assistant turn given the reference answers before it, fitted to
        ``max_prompt`` (oldest turns dropped first), and whether it was cut."""
        out, layouts = [], {0: lay}
        for k in range(1, len(lay.answers) + 1):
            for first in range(k):
                if first not in layouts:
                    layouts[first] = layout(self.tokenizer, self.template, example, first, self.close)
                pieces = self.ids(layouts[first].pieces(k - first, answer=False))
                prompt = [t for _, ids in pieces for t in ids]
                if len(prompt) <= max_prompt:
                    out.append((prompt, first > 0))
                    break
            else:
                out.append((fit(*_split_last_user(pieces), max_prompt)[0], True))
        return out


def _training_item(example_id: str, pieces: list[tuple[str, list[int]]]) -> Encoded:
    prompt, spans = [], []
    for kind, ids in pieces[:-1]:
        if kind == "answer":
            spans.append((len(prompt), len(prompt) + len(ids)))
        prompt += ids
    return Encoded(example_id, prompt, list(pieces[-1][1]), spans)


def _split_last_user(pieces: list[tuple[str, list[int]]]) -> tuple[list[int], list[int], list[int]]:
    """(head, user message, tail) ids of a prompt: the last user message may be shortened."""
    at = max((i for i, (kind, _) in enumerate(pieces) if kind == "user"), default=None)
    flat = lambda ps: [t for _, ids in ps for t in ids]  # noqa: E731
    if at is None:
        return flat(pieces), [], []
    return flat(pieces[:at]), list(pieces[at][1]), flat(pieces[at + 1:])


def encode(tokenizer, examples: list[Example], max_len: int) -> tuple[list[Encoded], int]:
    """Conversations for training: ids, the last answer, the earlier answers' spans (all of them
    carry loss unless training on the last turn only), and how many had to be cut."""
    encoder = ChatEncoder(tokenizer)
    out, cut = [], 0
    for ex, lay in zip(examples, encoder.layouts(examples)):
        item, was_cut = encoder.training(ex, lay, max_len)
        out.append(item)
        cut += was_cut
    return out, cut


def turn_prompts(tokenizer, examples: list[Example], max_prompt: int) -> list[list[tuple[list[int], bool]]]:
    """For each conversation, the prompt ids of each of its assistant turns (reference history)
    and whether each was cut to fit ``max_prompt``."""
    encoder = ChatEncoder(tokenizer)
    return [encoder.prompts(ex, lay, max_prompt) for ex, lay in zip(examples, encoder.layouts(examples))]


def stop_ids(tokenizer) -> list[int]:
    """The tokens greedy generation stops at: the end-of-sequence token, and the token that
    closes an assistant message in the chat template when it is a special one (``<|im_end|>``)."""
    stops = [tokenizer.eos_token_id]
    encoder = ChatEncoder(tokenizer)
    (lay,) = encoder.layouts([Example.conversation([("Hi", "", "OK")])])
    start, end = lay.answers[0]
    last = encoder.ids([("answer", lay.text[start:end])])[0][1][-1]
    special = set(tokenizer.all_special_ids) | set(tokenizer.get_added_vocab().values())
    if last in special and last not in stops:
        stops.append(last)
    return stops
