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

The rendered conversation is tokenised as one text (without added special tokens: the template
writes them), and the tokenizer's character offsets tell which tokens are each answer's: the
assistant's tokens, the only ones that carry loss. The prompt of turn ``k`` is the ids before
its answer, exactly what training saw before it. Should a token straddle the start or end of an
answer (or the tokenizer give no offsets), the conversation is tokenised piece by piece instead,
which keeps the same guarantees. A conversation longer than the context drops its oldest turns,
whole (the system message stays), until it fits; a last turn that alone is too long keeps at
most half the context for its answer and shortens the user's message, as single-turn examples
do (:func:`suite.data.batches.encode`).
"""
from __future__ import annotations

import bisect
from dataclasses import dataclass

from .batches import Encoded, fit, token_ids
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


def own_template(tokenizer) -> bool:
    """Whether ``tokenizer`` carries a chat template of the model's own: one that is not
    :data:`PLAIN_TEMPLATE` (which tiny-zh ships for conversations; ``--prompt-format auto`` keeps
    the instruction prompt there)."""
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, dict):
        template = template.get("default")
    return bool(template) and template not in (PLAIN_TEMPLATE, PLAIN_TEMPLATE.removeprefix("{{ bos_token or '' }}"))


def chat_format(tokenizer, prompt_format: str) -> bool:
    """Whether single-turn examples go through the chat template (``--prompt-format``: ``chat``,
    ``plain``, or ``auto``: when the model has a template of its own, :func:`own_template`)."""
    return prompt_format == "chat" or (prompt_format == "auto" and own_template(tokenizer))


def as_turn(example: Example) -> Example:
    """A single-turn example as a one-turn conversation (the same id, instruction, input and answer)."""
    return example if example.is_conversation else Example.conversation([example.all_turns[0]], id=example.id)


def render(tokenizer, template: str, messages: list[dict], generation: bool) -> str:
    """The text of ``messages`` through ``template`` (with the generation prompt or not)."""
    return tokenizer.apply_chat_template(messages, chat_template=template, tokenize=False,
                                         add_generation_prompt=generation)


@dataclass
class Rendered:
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


def rendered(tokenizer, template: str, example: Example, first: int = 0, close: str | None = None) -> Rendered:
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
    return Rendered(full, answers, users)


@dataclass
class Tokens:
    """A rendered conversation's ids, and where its turns are in them (token positions)."""

    ids: list[int]
    answers: list[tuple[int, int]]  # each assistant answer, its end-of-turn marker included
    users: list[tuple[int, int] | None]  # each user message, where it could be found

    def training(self, turns: int) -> Encoded:
        """The first ``turns`` turns for training: the last answer, and the earlier ones' spans."""
        start, end = self.answers[turns - 1]
        return Encoded("", self.ids[:start], self.ids[start:end], list(self.answers[: turns - 1]))

    def prompt(self, turn: int) -> tuple[list[int], list[int], list[int]]:
        """``(head, user message, tail)`` ids of the prompt of assistant turn ``turn``: the
        message may be shortened to fit, the rest must stay."""
        start = self.answers[turn - 1][0]
        a, b = self.users[turn - 1] or (start, start)
        return self.ids[:a], self.ids[a:b], self.ids[b:start]


class ChatEncoder:
    """Token ids of conversations through one tokenizer's chat template."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.template = template_of(tokenizer)
        self.close = user_close(tokenizer, self.template)
        self._end: list | None = None

    def end_marker(self) -> int | None:
        """The special token the template closes an assistant message with (``<|im_end|>``,
        ``<|eot_id|>``, ``</s>``), or None when it writes nothing after the answer (GLM-4's
        template: the next ``<|user|>`` ends it)."""
        if self._end is None:
            (tokens,) = self.tokens([self.rendered(Example.conversation([("Hi", "", "OK")]))])
            last = tokens.ids[tokens.answers[0][1] - 1]
            special = set(self.tokenizer.all_special_ids) | set(self.tokenizer.get_added_vocab().values())
            self._end = [last if last in special else None]
        return self._end[0]

    def rendered(self, example: Example, first: int = 0) -> Rendered:
        return rendered(self.tokenizer, self.template, example, first, self.close)

    def tokens(self, conversations: list[Rendered]) -> list[Tokens]:
        """Each rendered conversation's ids, by its whole text's tokenisation where the answers start and end
        at token boundaries, else piece by piece (all texts in one batched call)."""
        texts = [lay.text[: lay.answers[-1][1]] for lay in conversations]
        try:
            enc = self.tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True)
        except (NotImplementedError, ValueError, TypeError):  # a tokenizer without offsets
            enc = None
        out = []
        for i, lay in enumerate(conversations):
            whole = enc and _by_offsets(lay, enc["input_ids"][i], enc["offset_mapping"][i])
            out.append(whole or _by_pieces(self.tokenizer, lay))
        return out

    def training(self, example: Example, tokens: Tokens, max_len: int) -> tuple[Encoded, bool]:
        """The example for training (every answer's span), fitted to ``max_len``; whether it was cut."""
        n = len(example.all_turns)
        for first in range(n):
            if first:
                (tokens,) = self.tokens([self.rendered(example, first)])
            item = tokens.training(n - first)
            if self.end_marker() is None:  # a template that closes no answer: end it with EOS, so training teaches the stop
                item.answer = item.answer + [self.tokenizer.eos_token_id]
            if item.length <= max_len:
                item.example_id = example.id
                return item, first > 0
        answer = item.answer  # one turn left and still too long: cap the answer, shorten the message
        if len(answer) > max_len // 2:
            answer = answer[: max_len // 2 - 1] + answer[-1:]
        prompt, _ = fit(*tokens.prompt(1), max_len - len(answer))
        return Encoded(example.id, prompt, answer), True

    def prompts(self, example: Example, tokens: Tokens, max_prompt: int) -> list[tuple[list[int], bool]]:
        """The prompt of each assistant turn given the reference answers before it, fitted to
        ``max_prompt`` (oldest turns dropped first), and whether it was cut."""
        out, by_first = [], {0: tokens}
        for k in range(1, len(tokens.answers) + 1):
            for first in range(k):
                if first not in by_first:
                    (by_first[first],) = self.tokens([self.rendered(example, first)])
                parts = by_first[first].prompt(k - first)
                if sum(map(len, parts)) <= max_prompt:
                    out.append((sum(parts, []), first > 0))
                    break
            else:
                out.append((fit(*parts, max_prompt)[0], True))
        return out


def _by_offsets(lay: Rendered, ids: list[int], offsets: list[tuple[int, int]]) -> Tokens | None:
    """Token positions of the rendered conversation's turns from the tokenizer's character offsets; None when a
    token straddles the start or end of an answer."""
    starts = [s for s, _ in offsets]
    if any(b < a for a, b in zip(starts, starts[1:])):  # offsets out of order: trust none of them
        return None

    def at(c: int) -> int:  # the first token that starts at or after character c
        return bisect.bisect_left(starts, c)

    def clean(c: int) -> bool:
        i = at(c)
        return (i == 0 or offsets[i - 1][1] <= c) and (i == len(offsets) or offsets[i][0] >= c)

    if not all(clean(c) for span in lay.answers for c in span):
        return None
    answers = [(at(a), at(b)) for a, b in lay.answers]
    users = [(at(u[0]), at(u[1])) if u else None for u in lay.users]
    return Tokens(list(ids), answers, users)


def _by_pieces(tokenizer, lay: Rendered) -> Tokens:
    """The rendered conversation tokenised piece by piece (prompt, user message, answer...): every boundary is
    a token boundary by construction."""
    pieces = lay.pieces(len(lay.answers), answer=True)
    ids, answers, users = [], [], []
    for (kind, _), piece in zip(pieces, token_ids(tokenizer, [text for _, text in pieces], False)):
        span = (len(ids), len(ids) + len(piece))
        ids += piece
        if kind == "answer":
            answers.append(span)
            if len(users) < len(answers):  # a turn whose user message was not found
                users.append(None)
        elif kind == "user":
            users.append(span)
    return Tokens(ids, answers, users)


def encode(tokenizer, examples: list[Example], max_len: int) -> tuple[list[Encoded], int]:
    """Conversations for training: ids, the last answer, the earlier answers' spans (all of them
    carry loss unless training on the last turn only), and how many had to be cut."""
    encoder = ChatEncoder(tokenizer)
    out, cut = [], 0
    for ex, tokens in zip(examples, encoder.tokens([encoder.rendered(ex) for ex in examples])):
        item, was_cut = encoder.training(ex, tokens, max_len)
        out.append(item)
        cut += was_cut
    return out, cut


def turn_prompts(tokenizer, examples: list[Example], max_prompt: int) -> list[list[tuple[list[int], bool]]]:
    """For each conversation, the prompt ids of each of its assistant turns (reference history)
    and whether each was cut to fit ``max_prompt``."""
    encoder = ChatEncoder(tokenizer)
    conversations = [encoder.rendered(ex) for ex in examples]
    return [encoder.prompts(ex, tokens, max_prompt) for ex, tokens in zip(examples, encoder.tokens(conversations))]


def stop_ids(tokenizer) -> list[int]:
    """The tokens greedy generation stops at: the end-of-sequence token, and the token that
    closes an assistant message in the chat template when it is a special one (``<|im_end|>``)."""
    end = ChatEncoder(tokenizer).end_marker()
    return [tokenizer.eos_token_id] + ([end] if end is not None and end != tokenizer.eos_token_id else [])
