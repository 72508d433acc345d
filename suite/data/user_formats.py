"""The record formats of users' data files, told apart by their fields, and each record's example.

Single-turn instruction data (prompted in the instruction format):

- **Alpaca / BELLE**: ``{"instruction", "input", "output"}`` (``input`` may be left out);
- **ChatGLM-tuning**: ``{"context", "target"}``, the context being
  ``"Instruction: …\\nInput: …\\nAnswer: "``, read back into instruction and input.

Conversations (through the model's chat template; see :meth:`suite.data.tasks.Example.conversation`):

- **ShareGPT**: ``{"conversations": [{"from": "human"|"gpt"|"system", "value": …}, …]}``
  (``user``/``assistant`` are accepted as roles too, and a top-level ``system`` string);
- **OpenAI messages**: ``{"messages": [{"role": "user"|"assistant"|"system", "content": …}, …]}``
  (a content may be a list of ``{"type": "text", "text": …}`` parts);
- **ChatGLM**: ``{"prompt", "response", "history": [[question, answer], …]}`` (``history``
  may be left out or null);
- **BELLE multi-turn**: ``{"instruction": "Human: …\\nAssistant: …\\nHuman: …\\nAssistant:",
  "input": "", "output": …}``: an instruction that starts with ``Human:`` holds the conversation
  so far, ``output`` answers its last human turn.

A conversation starts with the user (after an optional system message), alternates user and
assistant turns and ends with the assistant's answer; no turn may be empty. Every problem is a
one-line :class:`~suite.errors.UsageError` naming the file, the line (or row), the field and,
inside a conversation, the turn (1 = the field's first entry).
"""
from __future__ import annotations

import re

from ..errors import UsageError
from .tasks import Example, Turn

#: each format's name in messages, with the fields that tell it apart
FORMATS = {
    "alpaca": "Alpaca/BELLE (instruction, input, output)",
    "chatglm-tuning": "ChatGLM-tuning (context, target)",
    "sharegpt": "ShareGPT (conversations)",
    "openai": "OpenAI messages (messages)",
    "chatglm": "ChatGLM (prompt, response, history)",
    "belle-multiturn": "BELLE multi-turn (Human:/Assistant: turns in instruction)",
}
CONVERSATION_FORMATS = frozenset({"sharegpt", "openai", "chatglm", "belle-multiturn"})

_CONTEXT = re.compile(r"\s*Instruction:[ \t]?(?P<instruction>.*?)\n(?:Input:[ \t]?(?P<input>.*?)\n)?Answer:\s*", re.S)
_BELLE_ROLE = re.compile(r"(?:^|\n)[ \t]*(Human|Assistant)[ \t]*[:：]")
_SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                   "chatgpt": "assistant", "system": "system"}
_OPENAI_ROLES = {"user": "user", "assistant": "assistant", "system": "system"}
_JSON_TYPES = {dict: "an object", list: "an array", str: "a string", bool: "a boolean", int: "a number", float: "a number", type(None): "null"}


def kind(value) -> str:
    """A JSON value's kind in words: ``an object``, ``an array``, ``null``..."""
    return _JSON_TYPES.get(type(value), type(value).__name__)


def check_object(path, where: str, record) -> dict:
    """``record`` if it is a JSON object, else a UsageError."""
    if not isinstance(record, dict):
        raise UsageError(f"{path}: {where}: a record must be a JSON object, not {kind(record)}")
    return record


def _string(path, where: str, record: dict, field: str, required: bool = True) -> str:
    if field not in record:
        if required:
            raise UsageError(f"{path}: {where}: field {field!r} is missing")
        return ""
    value = record[field]
    if not isinstance(value, str):
        raise UsageError(f"{path}: {where}: field {field!r} must be a string, not {kind(value)}")
    return value


def record_format(path, where: str, record: dict) -> str:
    """Which of :data:`FORMATS` a record is in, by its fields."""
    if "conversations" in record:
        return "sharegpt"
    if "messages" in record:
        return "openai"
    if "context" in record or "target" in record:
        return "chatglm-tuning"
    if "prompt" in record or "response" in record:
        return "chatglm"
    if "instruction" in record or "output" in record:
        instruction = record.get("instruction")
        return "belle-multiturn" if isinstance(instruction, str) and _BELLE_ROLE.match(instruction.lstrip()) \
            else "alpaca"
    fields = ", ".join(sorted(map(str, record))) or "none"
    raise UsageError(
        f"{path}: {where}: a record needs the fields instruction, input, output (Alpaca, BELLE), "
        f"context, target (ChatGLM-tuning), conversations (ShareGPT), messages (OpenAI) "
        f"or prompt, response, history (ChatGLM); it has {fields}"
    )


def to_example(path, where: str, record: dict, fmt: str | None = None) -> Example:
    """The example of one record (its format found from its fields unless ``fmt`` is given)."""
    fmt = fmt or record_format(path, where, record)
    return _READERS[fmt](path, where, record)


# ---------------------------------------------------------------- single-turn formats


def _single(path, where, instruction, input_, output, prompt_field, answer_field) -> Example:
    if not output.strip():
        raise UsageError(f"{path}: {where}: field {answer_field!r} is empty")
    if not instruction and not input_:
        raise UsageError(f"{path}: {where}: field {prompt_field!r} is empty")
    return Example("", instruction, input_, output.strip())


def _alpaca(path, where, record) -> Example:
    instruction = _string(path, where, record, "instruction").strip()
    input_ = _string(path, where, record, "input", required=False).strip()
    output = _string(path, where, record, "output")
    return _single(path, where, instruction, input_, output, "instruction", "output")


def _chatglm_tuning(path, where, record) -> Example:
    context = _string(path, where, record, "context")
    output = _string(path, where, record, "target")
    m = _CONTEXT.fullmatch(context)
    if m:
        instruction, input_ = m["instruction"].strip(), (m["input"] or "").strip()
    else:  # a free-form context: all of it is the instruction
        instruction, input_ = re.sub(r"\s*Answer:\s*$", "", context).strip(), ""
    return _single(path, where, instruction, input_, output, "context", "target")


# ---------------------------------------------------------------- conversations


def _conversation(path, where: str, field: str, messages: list[tuple[str, str, str]], system: str = "") -> Example:
    """The conversation of ``messages`` — ``(role, text, role as written)``, role one of system,
    user, assistant — checked: an optional system message first, then user and assistant turns
    in turn, none empty, the last the assistant's."""
    def error(turn: int, message: str) -> UsageError:
        return UsageError(f"{path}: {where}: field {field!r}, turn {turn}: {message}")

    start = 0
    if messages and messages[0][0] == "system":
        system, start = messages[0][1].strip(), 1
    turns, question = [], None
    for i, (role, text, written) in enumerate(messages[start:], start + 1):
        expected = "user" if question is None else "assistant"
        if role == "system":
            raise error(i, f"role out of order: a system message ({written!r}) may only come first")
        if role != expected:
            if i == start + 1:
                raise error(i, f"role out of order: a conversation starts with a user turn, not {written!r}")
            raise error(i, f"role out of order: {written!r} follows {messages[i - 2][2]!r} "
                           "(user and assistant turns alternate)")
        if not text.strip():
            raise error(i, f"empty turn ({written!r} says nothing)")
        if question is None:
            question = text.strip()
        else:
            turns.append(Turn(question, "", text.strip()))
            question = None
    if question is not None:
        raise error(len(messages), f"the conversation ends on a user turn ({messages[-1][2]!r}); "
                                   "it must end with the assistant's answer")
    if not turns:
        raise UsageError(f"{path}: {where}: field {field!r} holds no user and assistant turns")
    return Example.conversation(turns, system)


def _message_list(path, where: str, record: dict, field: str) -> list:
    if field not in record:
        raise UsageError(f"{path}: {where}: field {field!r} is missing")
    value = record[field]
    if not isinstance(value, list):
        raise UsageError(f"{path}: {where}: field {field!r} must be an array of turns, not {kind(value)}")
    if not value:
        raise UsageError(f"{path}: {where}: field {field!r} is empty")
    return value


def _message(path, where, field: str, turn: int, message, role_key: str, text_key: str, roles: dict) -> tuple:
    def error(text: str) -> UsageError:
        return UsageError(f"{path}: {where}: field {field!r}, turn {turn}: {text}")

    if not isinstance(message, dict):
        raise error(f"a turn must be an object with {role_key!r} and {text_key!r}, not {kind(message)}")
    for key in (role_key, text_key):
        if key not in message:
            raise error(f"field {key!r} is missing")
    role, text = message[role_key], message[text_key]
    if not isinstance(role, str) or role not in roles:
        known = ", ".join(dict.fromkeys(roles))
        raise error(f"unknown role {role!r} in {role_key!r} (known: {known})")
    if isinstance(text, list):  # OpenAI's content parts: the text ones, joined
        if not all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str) for p in text):
            raise error(f"field {text_key!r} must be a string or a list of text parts")
        text = "".join(p["text"] for p in text)
    if not isinstance(text, str):
        raise error(f"field {text_key!r} must be a string, not {kind(text)}")
    return roles[role], text, role


def _sharegpt(path, where, record) -> Example:
    field = "conversations"
    messages = [_message(path, where, field, i, m, "from", "value", _SHAREGPT_ROLES)
                for i, m in enumerate(_message_list(path, where, record, field), 1)]
    return _conversation(path, where, field, messages, _string(path, where, record, "system", required=False).strip())


def _openai(path, where, record) -> Example:
    field = "messages"
    messages = [_message(path, where, field, i, m, "role", "content", _OPENAI_ROLES)
                for i, m in enumerate(_message_list(path, where, record, field), 1)]
    return _conversation(path, where, field, messages)


def _chatglm(path, where, record) -> Example:
    prompt = _string(path, where, record, "prompt")
    response = _string(path, where, record, "response")
    history = record.get("history")
    if history is None:
        history = []
    if not isinstance(history, list):
        raise UsageError(f"{path}: {where}: field 'history' must be an array of [question, answer] pairs, not {kind(history)}")
    turns = []
    for i, pair in enumerate(history, 1):
        if not (isinstance(pair, (list, tuple)) and len(pair) == 2 and all(isinstance(x, str) for x in pair)):
            raise UsageError(f"{path}: {where}: field 'history', turn {i}: a turn must be a [question, answer] pair "
                             f"of strings, not {kind(pair)}" + (f" of {len(pair)}" if isinstance(pair, list) else ""))
        for text, what in zip(pair, ("question", "answer")):
            if not text.strip():
                raise UsageError(f"{path}: {where}: field 'history', turn {i}: empty turn (the {what} is empty)")
        turns.append(Turn(pair[0].strip(), "", pair[1].strip()))
    if not prompt.strip():
        raise UsageError(f"{path}: {where}: field 'prompt' is empty")
    if not response.strip():
        raise UsageError(f"{path}: {where}: field 'response' is empty (the conversation ends on a user turn)")
    return Example.conversation(turns + [Turn(prompt.strip(), "", response.strip())])


def _belle_multiturn(path, where, record) -> Example:
    instruction = _string(path, where, record, "instruction")
    input_ = _string(path, where, record, "input", required=False).strip()
    output = _string(path, where, record, "output")
    parts = _BELLE_ROLE.split(instruction.lstrip())[1:]  # role, text, role, text...
    messages = [("user" if role == "Human" else "assistant", text, f"{role}:") for role, text in zip(parts[::2], parts[1::2])]
    if messages and messages[-1][0] == "assistant" and not messages[-1][1].strip():
        messages.pop()  # the "Assistant:" cue the output answers
    if messages and messages[-1][0] == "assistant":
        raise UsageError(f"{path}: {where}: field 'instruction', turn {len(messages)}: the instruction ends on an "
                         "assistant turn; its last 'Human:' turn's answer belongs in 'output'")
    if input_ and messages:
        role, text, written = messages[-1]
        messages[-1] = (role, f"{text.strip()}\n{input_}", written)
    if not output.strip():
        raise UsageError(f"{path}: {where}: field 'output' is empty (the conversation ends on a user turn)")
    return _conversation(path, where, "instruction", messages + [("assistant", output, "output")])


_READERS = {
    "alpaca": _alpaca, "chatglm-tuning": _chatglm_tuning, "sharegpt": _sharegpt, "openai": _openai,
    "chatglm": _chatglm, "belle-multiturn": _belle_multiturn,
}
