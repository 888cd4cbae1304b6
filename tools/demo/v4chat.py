"""DeepSeek V4 prompt rendering for the demo data (Python, no dependencies).

The project's authoritative renderer is the C++ chat encoder (`dsv4 render`).
This module exists so the demo tooling (tokenizer training, length statistics,
tests) works on a checkout where the C++ binary is not built yet, and so the
two can be cross-checked. It follows DeepSeek's `encoding_dsv4.py` as described
in tests/data/chat/README.md for the features the demo data uses: system /
user / assistant / tool / developer / latest_reminder messages, tools and
response_format on system or developer messages, reasoning_effort, drop_thinking,
wo_eos. Quick-instruction tasks and `context` are rejected (the demo never uses
them). tests/demo/check_demo.py compares it with every golden encode case that
stays inside this subset.
"""

import copy
import json

BOS = "<｜begin▁of▁sentence｜>"
EOS = "<｜end▁of▁sentence｜>"
USER = "<｜User｜>"
ASSISTANT = "<｜Assistant｜>"
THINK_START = "<think>"
THINK_END = "</think>"
DSML = "｜DSML｜"
LATEST_REMINDER = "<｜latest_reminder｜>"

MAX_EFFORT_PREFIX = (
    "Reasoning Effort: Absolute maximum with no shortcuts permitted.\n"
    "You MUST be very thorough in your thinking and comprehensively decompose the problem to "
    "resolve the root cause, rigorously stress-testing your logic against all potential paths, "
    "edge cases, and adversarial scenarios.\n"
    "Explicitly write out your entire deliberation process, documenting every intermediate step, "
    "considered alternative, and rejected hypothesis to ensure absolutely no assumption is left "
    "unchecked.\n\n")

TOOLS_TEMPLATE = (
    "## Tools\n\n"
    "You have access to a set of tools to help answer the user's question. You can invoke tools "
    "by writing a \"<{dsml}tool_calls>\" block like the following:\n\n"
    "<{dsml}tool_calls>\n"
    "<{dsml}invoke name=\"$TOOL_NAME\">\n"
    "<{dsml}parameter name=\"$PARAMETER_NAME\" string=\"true|false\">$PARAMETER_VALUE"
    "</{dsml}parameter>\n"
    "...\n"
    "</{dsml}invoke>\n"
    "<{dsml}invoke name=\"$TOOL_NAME2\">\n"
    "...\n"
    "</{dsml}invoke>\n"
    "</{dsml}tool_calls>\n\n"
    "String parameters should be specified as is and set `string=\"true\"`. For all other types "
    "(numbers, booleans, arrays, objects), pass the value in JSON format and set "
    "`string=\"false\"`.\n\n"
    "If thinking_mode is enabled (triggered by <think>), you MUST output your complete reasoning "
    "inside <think>...</think> BEFORE any tool calls or final response.\n\n"
    "Otherwise, output directly after </think> with tool calls or final response.\n\n"
    "### Available Tool Schemas\n\n"
    "{schemas}\n\n"
    "You MUST strictly follow the above defined tool name and parameter schemas to invoke tool "
    "calls.\n")

RESPONSE_FORMAT_TEMPLATE = (
    "## Response Format:\n\nYou MUST strictly adhere to the following schema to reply:\n{schema}")


class RenderError(ValueError):
    """The input is outside what the official encoder accepts (or outside this subset)."""


def _dumps(value):
    # The official encoder serialises with Python's defaults plus ensure_ascii=False.
    return json.dumps(value, ensure_ascii=False)


def _tool_schema_line(tool):
    function = tool["function"] if "function" in tool else tool
    return _dumps(function)


def _system_like(msg):
    text = msg.get("content") or ""
    if msg.get("tools"):
        schemas = "\n".join(_tool_schema_line(t) for t in msg["tools"])
        text += "\n\n" + TOOLS_TEMPLATE.format(dsml=DSML, schemas=schemas)
    if msg.get("response_format"):
        text += "\n\n" + RESPONSE_FORMAT_TEMPLATE.format(schema=_dumps(msg["response_format"]))
    return text


def _dsml_tool_calls(tool_calls):
    lines = [f"<{DSML}tool_calls>"]
    for call in tool_calls:
        function = call["function"]
        lines.append(f"<{DSML}invoke name=\"{function['name']}\">")
        raw = function.get("arguments", "{}")
        try:
            args = json.loads(raw) if isinstance(raw, str) else raw
        except json.JSONDecodeError:
            args = {"arguments": raw}
        if not isinstance(args, dict):
            args = {"arguments": raw}
        params = []
        for key, value in args.items():
            if isinstance(value, str):
                params.append(f"<{DSML}parameter name=\"{key}\" string=\"true\">{value}"
                              f"</{DSML}parameter>")
            else:
                params.append(
                    f"<{DSML}parameter name=\"{key}\" string=\"false\">{_dumps(value)}"
                    f"</{DSML}parameter>")
        # A call without parameters renders as an empty line inside the invoke.
        lines.append("\n".join(params) if params else "")
        lines.append(f"</{DSML}invoke>")
    lines.append(f"</{DSML}tool_calls>")
    return "\n".join(lines)


def _tool_result_text(content):
    # OpenAI content-part lists: text parts are joined, other parts become a marker.
    if isinstance(content, list):
        return "\n\n".join(p.get("text", "") if p.get("type") == "text" else
                            f"[Unsupported {p.get('type')}]" for p in content)
    return content or ""


def _merge_tool_and_user_messages(messages):
    """Folds tool messages into user turns and merges consecutive user turns."""
    merged = []
    last_call_order = {}
    for msg in messages:
        role = msg.get("role")
        if role == "assistant":
            last_call_order = {c.get("id"): i for i, c in enumerate(msg.get("tool_calls") or [])}
        if role == "tool":
            block = {"kind": "tool", "text": _tool_result_text(msg.get("content")),
                     "order": last_call_order.get(msg.get("tool_call_id"), len(last_call_order))}
        elif role == "user":
            if msg.get("task"):
                raise RenderError(
                    "quick-instruction tasks are not supported by tools/demo/v4chat.py")
            block = {"kind": "text", "text": msg.get("content") or ""}
        else:
            merged.append(copy.deepcopy(msg))
            continue
        if merged and merged[-1].get("role") == "user" and "_blocks" in merged[-1]:
            merged[-1]["_blocks"].append(block)
        else:
            merged.append({"role": "user", "_blocks": [block]})
    for msg in merged:
        if "_blocks" in msg:
            tools = [b for b in msg["_blocks"] if b["kind"] == "tool"]
            tools.sort(key=lambda b: b["order"])  # stable: equal orders keep arrival order
            texts = [b for b in msg["_blocks"] if b["kind"] == "text"]
            parts = [f"<tool_result>{b['text']}</tool_result>" for b in tools]
            parts += [b["text"] for b in texts]
            msg["content"] = "\n\n".join(parts)
            del msg["_blocks"]
    return merged


def render(case_input):
    """Renders an encode-case `input` object to the exact prompt text."""
    return "".join(text for text, _ in render_segments(case_input))


def render_segments(case_input):
    """The rendered text cut into [(text, is_assistant_output)].

    is_assistant_output marks what the model generates itself: each assistant
    turn's (kept) reasoning, `</think>`, content, DSML block and EOS -- the span a
    training loss is computed on. Every such span starts right after an added
    token (`<think>` / `</think>`) and ends with one (EOS), so tokenizing the
    segments one by one gives the same ids as tokenizing the whole text.
    """
    if case_input.get("context"):
        raise RenderError("`context` is not supported by tools/demo/v4chat.py")
    messages = copy.deepcopy(case_input["messages"])
    if "tools" in case_input:
        messages[case_input["tools_attached_to"]]["tools"] = case_input["tools"]
    thinking = case_input["thinking_mode"] == "thinking"
    if case_input["thinking_mode"] not in ("thinking", "chat"):
        raise RenderError(f"invalid thinking_mode: {case_input['thinking_mode']}")
    effort = case_input.get("reasoning_effort")
    if effort not in (None, "high", "max"):
        raise RenderError(f"Invalid reasoning effort: {effort}")
    drop_thinking = case_input.get("drop_thinking", True)

    for msg in messages:
        if msg.get("role") == "developer" and not msg.get("content"):
            raise RenderError(f"Invalid message for role `developer`: {msg}")
        if msg.get("role") not in ("system", "user", "assistant", "tool", "developer",
                                   "latest_reminder"):
            raise RenderError(f"Unknown role: {msg.get('role')}")
        if msg.get("task"):
            raise RenderError("quick-instruction tasks are not supported by tools/demo/v4chat.py")

    messages = _merge_tool_and_user_messages(messages)
    # Reasoning from earlier turns is kept whenever tools are in play (agentic traces).
    if any(m.get("tools") for m in messages if m["role"] in ("system", "developer")):
        drop_thinking = False
    last_user = max((i for i, m in enumerate(messages) if m["role"] in ("user", "developer")),
                    default=-1)

    out = []
    if case_input.get("add_default_bos_token", True):
        out.append(BOS)
    if thinking and effort == "max":
        out.append(MAX_EFFORT_PREFIX)
    for i, msg in enumerate(messages):
        role = msg["role"]
        nxt = messages[i + 1]["role"] if i + 1 < len(messages) else None
        if role == "system":
            out.append(_system_like(msg))
        elif role == "latest_reminder":
            out.append(LATEST_REMINDER + str(msg.get("content")))
        elif role in ("user", "developer"):
            out.append(USER + (_system_like(msg) if role == "developer" else msg["content"]))
            if nxt in ("assistant", "latest_reminder") or nxt is None:
                opens_thinking = thinking and (not drop_thinking or i >= last_user)
                out.append(ASSISTANT + (THINK_START if opens_thinking else THINK_END))
        elif role == "assistant":
            text = ""
            keep_reasoning = thinking and (not drop_thinking or i > last_user)
            if keep_reasoning:
                text += (msg.get("reasoning_content") or "") + THINK_END
            text += msg.get("content") or ""
            if msg.get("tool_calls"):
                text += "\n\n" + _dsml_tool_calls(msg["tool_calls"])
            if not msg.get("wo_eos"):
                text += EOS
            out.append((text, True))
    return [(p, False) if isinstance(p, str) else p for p in out]
