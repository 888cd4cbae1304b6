#!/usr/bin/python3
"""Deterministic conversation generator for the bundled tiny demo model.

Every output line is an encode-case `input` object (tests/data/chat/README.md):
`messages` (+ `tools`/`tools_attached_to`, `thinking_mode`, optional
`reasoning_effort`), i.e. exactly what `dsv4 render` reads on stdin, so the
training text goes through the real chat encoder. Each conversation ends with
the assistant turn the model must learn to produce.

    gen_data.py --seed 1 --n 20000 --out train.jsonl            # training set
    gen_data.py --seed 2 --n 1000 --split eval --out eval.jsonl  # held-out set

Train and eval never share a prompt: every conversation has a key (for
arithmetic the operand pair and operator, otherwise the final user prompt) and
sha256(key) decides which split it belongs to; the generator resamples until it
draws a conversation of the requested split. `--meta FILE` writes one line per
conversation with its category and the reference answer, for the eval script.

All texts are templates written for this project (no external corpus).
"""

import argparse
import hashlib
import json
import random
import sys

EVAL_PERCENT = 10  # share of the key space reserved for held-out evaluation

# ----------------------------------------------------------------------------- vocabulary

COUNTRIES = [
    ("France", "Paris"), ("Germany", "Berlin"), ("Italy", "Rome"), ("Spain", "Madrid"),
    ("Portugal", "Lisbon"), ("Japan", "Tokyo"), ("China", "Beijing"), ("India", "New Delhi"),
    ("Egypt", "Cairo"), ("Kenya", "Nairobi"), ("Nigeria", "Abuja"), ("Brazil", "Brasilia"),
    ("Argentina", "Buenos Aires"), ("Peru", "Lima"), ("Canada", "Ottawa"),
    ("Mexico", "Mexico City"), ("Australia", "Canberra"), ("Norway", "Oslo"),
    ("Sweden", "Stockholm"), ("Finland", "Helsinki"), ("Denmark", "Copenhagen"),
    ("Poland", "Warsaw"), ("Greece", "Athens"), ("Turkey", "Ankara"), ("Russia", "Moscow"),
    ("Ireland", "Dublin"), ("Austria", "Vienna"), ("Hungary", "Budapest"),
    ("Netherlands", "Amsterdam"), ("Belgium", "Brussels"), ("Switzerland", "Bern"),
    ("South Korea", "Seoul"), ("Thailand", "Bangkok"), ("Vietnam", "Hanoi"),
    ("Indonesia", "Jakarta"), ("Chile", "Santiago"), ("Colombia", "Bogota"),
    ("Morocco", "Rabat"), ("Ghana", "Accra"), ("Iceland", "Reykjavik"),
]

CITIES = [
    "Paris", "Berlin", "Rome", "Madrid", "Lisbon", "Tokyo", "Beijing", "Cairo", "Nairobi",
    "Lima", "Ottawa", "Oslo", "Stockholm", "Helsinki", "Warsaw", "Athens", "Dublin", "Vienna",
    "Seoul", "Bangkok", "Hanoi", "Jakarta", "Santiago", "Accra", "London", "Sydney",
    "Chicago", "Toronto", "Mumbai", "Lagos", "Istanbul", "Prague", "Zurich", "Boston",
]

COLOURS = [
    ("the sky on a clear day", "blue"), ("fresh grass", "green"), ("a ripe banana", "yellow"),
    ("snow", "white"), ("coal", "black"), ("a ripe tomato", "red"), ("an orange", "orange"),
    ("a lemon", "yellow"), ("a strawberry", "red"), ("milk", "white"), ("a crow", "black"),
    ("a pumpkin", "orange"), ("a lime", "green"), ("a blueberry", "blue"),
    ("an eggplant", "purple"), ("chocolate", "brown"), ("a flamingo", "pink"),
]

DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August",
          "September", "October", "November", "December"]

WORDS = [
    "apple", "river", "garden", "window", "planet", "yellow", "pencil", "orange", "bridge",
    "candle", "forest", "rabbit", "silver", "spring", "summer", "winter", "basket", "button",
    "castle", "dragon", "island", "jungle", "ladder", "market", "needle", "pepper", "rocket",
    "saddle", "tomato", "violin", "wallet", "banana", "strawberry", "mountain", "elephant",
    "library", "morning", "kitchen", "picture", "teacher", "weather", "chicken", "blanket",
    "cat", "dog", "sun", "moon", "tree", "book", "door", "fish", "bird", "cloud", "stone",
]

OPPOSITES = [
    ("hot", "cold"), ("big", "small"), ("fast", "slow"), ("up", "down"), ("light", "dark"),
    ("happy", "sad"), ("open", "closed"), ("early", "late"), ("full", "empty"),
    ("old", "new"), ("high", "low"), ("wet", "dry"), ("hard", "soft"), ("long", "short"),
]

ANIMAL_SOUNDS = [("dog", "barks"), ("cat", "meows"), ("cow", "moos"), ("duck", "quacks"),
                 ("sheep", "bleats"), ("lion", "roars"), ("horse", "neighs"),
                 ("owl", "hoots"), ("frog", "croaks"), ("bee", "buzzes")]

# (question unit, answer unit, factor): "How many <ans> are in N <q>?" = N * factor
UNIT_FACTORS = [
    ("hours", "minutes", 60), ("minutes", "seconds", 60), ("days", "hours", 24),
    ("weeks", "days", 7), ("kilometres", "metres", 1000), ("metres", "centimetres", 100),
    ("kilograms", "grams", 1000), ("litres", "millilitres", 1000), ("years", "months", 12),
    ("dollars", "cents", 100),
]

NAMES = ["Alice", "Bob", "Carol", "David", "Emma", "Farid", "Grace", "Hiro", "Ines", "Jonas",
         "Kemi", "Liam", "Maya", "Nora", "Omar", "Priya", "Quinn", "Rosa", "Sven", "Tara"]

SYSTEM_PROMPTS = [
    "You are a helpful assistant.", "You are a concise assistant.",
    "You are dsv4-demo, a tiny assistant.", "Answer briefly and correctly.",
    "You are a friendly assistant. Keep answers short.",
]

IDENTITY = ("I am dsv4-demo, a tiny model with the DeepSeek V4 architecture, trained to show how "
            "dsv4 works.")

# ----------------------------------------------------------------------------- helpers


def split_of(key):
    """Returns 'train' or 'eval' for a conversation key (stable across machines). Single-digit
    facts are always training data: they are the steps of every column sum, not a gate."""
    if key.startswith("fact:"):
        return "train"
    digest = hashlib.sha256(key.encode("utf-8")).digest()
    return "eval" if int.from_bytes(digest[:4], "big") % 100 < EVAL_PERCENT else "train"


class Sample:
    """One conversation under construction."""

    def __init__(self, category, key):
        self.category = category
        self.key = key
        self.messages = []
        self.tools = None
        self.thinking_mode = "chat"
        self.reasoning_effort = None
        self.meta = {}

    def to_input(self):
        obj = {"messages": self.messages}
        if self.tools is not None:
            obj["tools"] = self.tools
            obj["tools_attached_to"] = 0
        obj["thinking_mode"] = self.thinking_mode
        if self.reasoning_effort is not None:
            obj["reasoning_effort"] = self.reasoning_effort
        return obj


def assistant(content, reasoning=None, thinking=False, tool_calls=None):
    msg = {"role": "assistant"}
    if thinking:
        msg["reasoning_content"] = reasoning
    msg["content"] = content
    if tool_calls:
        msg["tool_calls"] = tool_calls
    return msg


def maybe_system(rng, sample, p=0.6):
    if rng.random() < p:
        sample.messages.append({"role": "system", "content": rng.choice(SYSTEM_PROMPTS)})


# ----------------------------------------------------------------------------- arithmetic


def column_steps(a, op, b):
    """The column method for two non-negative numbers below 100 (op '-' needs a >= b), one
    two-operand digit fact per step, e.g. 79 + 25 -> "ones 9 + 5 = 14, write 4, carry 1; tens
    7 + 2 = 9, 9 + 1 = 10". Steps stay short so that everything a step reads (the operands,
    the previous step) sits well inside the model's 128-token sliding window."""
    ao, bo, at, bt = a % 10, b % 10, a // 10, b // 10
    if op == "+":
        ones = ao + bo
        if ones >= 10:
            return (f"ones {ao} + {bo} = {ones}, write {ones - 10}, carry 1; "
                    f"tens {at} + {bt} = {at + bt}, {at + bt} + 1 = {at + bt + 1}")
        return f"ones {ao} + {bo} = {ones}; tens {at} + {bt} = {at + bt}"
    if ao < bo:
        return (f"ones {ao} < {bo}, borrow: {ao + 10} - {bo} = {ao + 10 - bo}; "
                f"tens {at} - 1 = {at - 1}, {at - 1} - {bt} = {at - 1 - bt}")
    return f"ones {ao} - {bo} = {ao - bo}; tens {at} - {bt} = {at - bt}"


def arithmetic_working(a, op, b, thorough=False):
    """One line of working ending in the result ("79 + 25: ones ... So 79 + 25 = 104."): the
    reasoning in thinking mode, the answer itself in chat mode. Single-digit problems are a
    bare fact ("7 + 5 = 12.")."""
    result = a + b if op == "+" else a - b
    if a < 10 and b < 10 and result >= 0:
        text = f"{a} {op} {b} = {result}."
    elif op == "-" and a < b:
        # The larger minus the smaller, negated: the same column steps, one short prefix.
        text = (f"{a} - {b} = -({b} - {a}): {column_steps(b, '-', a)}. "
                f"So {b} - {a} = {-result} and {a} - {b} = {result}.")
    else:
        text = f"{a} {op} {b}: {column_steps(a, op, b)}. So {a} {op} {b} = {result}."
    if thorough:
        inverse = f"{result} + {b}" if op == "-" else f"{result} - {b}"
        text += f" Check: {inverse} = {a}. The answer is {result}."
    return text, result


ARITH_QUESTIONS = [
    "What is {a} {op} {b}?", "What is {a}{op}{b}?", "Compute {a} {op} {b}.", "{a} {op} {b} = ?",
    "Calculate {a} {op} {b}.", "How much is {a} {op} {b}?", "Please work out {a} {op} {b}.",
    "{a}{op}{b}=?", "What do you get for {a} {op} {b}?", "{a} {op} {b}", "what's {a} {op} {b}",
    "What is {a} {word} {b}?", "How much is {a} {word} {b}?", "Work out {a} {word} {b}.",
]
ARITH_QUESTIONS_ADD = ["What is the sum of {a} and {b}?", "Add {a} and {b}.",
                       "What do I get if I add {a} and {b}?"]
ARITH_QUESTIONS_SUB = ["Subtract {b} from {a}.", "What is {b} less than {a}?",
                       "Take {b} away from {a}."]
OP_WORDS = {"+": "plus", "-": "minus"}
# Thinking mode: the working ends "So a op b = r.", so the answer after </think> copies from
# right before it.
ARITH_ANSWERS = ["{a} {op} {b} = {r}.", "{r}", "The answer is {r}.", "{a} {op} {b} = {r}"]


def draw_operands(rng):
    a, b = rng.randint(10, 99), rng.randint(10, 99)
    op = rng.choice("+-")
    # Keep most differences non-negative; negative results stay in the mix but rarer.
    if op == "-" and a < b and rng.random() < 0.75:
        a, b = b, a
    return a, op, b


def arith_question(rng, a, op, b):
    forms = ARITH_QUESTIONS + (ARITH_QUESTIONS_ADD if op == "+" else ARITH_QUESTIONS_SUB)
    return rng.choice(forms).format(a=a, op=op, b=b, word=OP_WORDS[op])


def arith_sample(rng, thinking, effort, a, op, b, category, key):
    s = Sample(category, key)
    maybe_system(rng, s, 0.4)
    s.messages.append({"role": "user", "content": arith_question(rng, a, op, b)})
    working, result = arithmetic_working(a, op, b, thorough=effort == "max")
    if thinking:
        answer = rng.choice(ARITH_ANSWERS).format(a=a, op=op, b=b, r=result)
        s.messages.append(assistant(answer, working, thinking))
    else:
        # Chat mode answers at once, with the same one line of working: the column steps are
        # what let a 4-layer, 128-wide model get the digits right.
        s.messages.append(assistant(working, None, thinking))
    s.thinking_mode = "thinking" if thinking else "chat"
    s.reasoning_effort = effort
    s.meta = {"answer": str(result), "a": a, "op": op, "b": b}
    return s


def gen_arithmetic(rng, thinking, effort=None):
    a, op, b = draw_operands(rng)
    return arith_sample(rng, thinking, effort, a, op, b, "arithmetic", f"arith:{a}{op}{b}")


def gen_digit_fact(rng, thinking, effort=None):
    """A single-digit problem: the facts every column step is made of (training only: the
    eval category is 2-digit arithmetic)."""
    a, b = rng.randint(0, 9), rng.randint(0, 9)
    op = rng.choice("+-")
    if op == "-" and a < b:
        a, b = b, a
    return arith_sample(rng, thinking, effort, a, op, b, "digit_fact", f"fact:{a}{op}{b}")


def gen_arithmetic_drill(rng, thinking, effort=None):
    """3-6 independent problems in one conversation, a quarter of them single-digit facts: many
    answers per token of context (earlier turns render without their reasoning, as the chat
    format drops it). The last problem is 2-digit, and decides the split."""
    parts = [gen_digit_fact(rng, thinking, effort) if rng.random() < 0.25
             else gen_arithmetic(rng, thinking, effort) for _ in range(rng.randint(2, 5))]
    last = gen_arithmetic(rng, thinking, effort)
    s = Sample("arithmetic", "|".join(p.key for p in parts + [last]))
    s.messages = [m for m in parts[0].messages]
    for p in parts[1:] + [last]:
        s.messages += [m for m in p.messages if m["role"] != "system"]
    s.thinking_mode, s.reasoning_effort, s.meta = last.thinking_mode, effort, last.meta
    return s


# ----------------------------------------------------------------------------- everyday Q&A


def qa_capital(rng):
    country, capital = rng.choice(COUNTRIES)
    q = rng.choice(["What is the capital of {c}?", "Which city is the capital of {c}?",
                    "Name the capital of {c}.", "capital of {c}?",
                    "What's the capital city of {c}?"])
    reasoning = f"The question asks for the capital of {country}. It is {capital}."
    return (q.format(c=country), reasoning,
            rng.choice([f"The capital of {country} is {capital}.", f"{capital}."]), capital)


def qa_colour(rng):
    thing, colour = rng.choice(COLOURS)
    q = rng.choice(["What colour is {t}?", "What color is {t}?", "Which colour is {t}?"])
    return (q.format(t=thing), f"{thing[0].upper() + thing[1:]} is usually {colour}.",
            rng.choice([f"It is {colour}.", f"{colour[0].upper() + colour[1:]}."]), colour)


def qa_day(rng):
    i = rng.randrange(7)
    kind = rng.randrange(3)
    if kind == 0:
        day = DAYS[(i + 1) % 7]
        q = rng.choice(["What day comes after {d}?", "Which day follows {d}?",
                        "What is the day after {d}?"]).format(d=DAYS[i])
        r = f"The days go {DAYS[i]}, {day}. So the day after {DAYS[i]} is {day}."
        return q, r, f"The day after {DAYS[i]} is {day}.", day
    if kind == 1:
        day = DAYS[(i - 1) % 7]
        q = rng.choice(["What day comes before {d}?",
                        "What is the day before {d}?"]).format(d=DAYS[i])
        r = f"The days go {day}, {DAYS[i]}. So the day before {DAYS[i]} is {day}."
        return q, r, f"The day before {DAYS[i]} is {day}.", day
    m = rng.randrange(12)
    month = MONTHS[(m + 1) % 12]
    q = rng.choice(["Which month comes after {m}?", "What month follows {m}?"]).format(m=MONTHS[m])
    r = f"The months go {MONTHS[m]}, {month}. So the month after {MONTHS[m]} is {month}."
    return q, r, f"{month} comes after {MONTHS[m]}.", month


def qa_units(rng):
    src, dst, factor = rng.choice(UNIT_FACTORS)
    n = rng.randint(2, 9)
    total = n * factor
    q = rng.choice(["How many {d} are in {n} {s}?", "Convert {n} {s} to {d}.",
                    "{n} {s} is how many {d}?"]).format(d=dst, n=n, s=src)
    r = f"One of the {src} is {factor} {dst}. {n} times {factor} is {total}."
    return q, r, f"{n} {src} is {total} {dst}.", str(total)


def qa_spelling(rng):
    word = rng.choice(WORDS)
    spelled = "-".join(word)
    q = rng.choice(["Spell the word {w}.", "How do you spell {w}?",
                    "Spell {w} letter by letter."]).format(w=word)
    r = f"The letters of {word} in order are {' '.join(word)}."
    return q, r, f"{word} is spelled {spelled}.", spelled


def qa_count_letters(rng):
    word = rng.choice(WORDS)
    if rng.random() < 0.5:
        q = rng.choice(["How many letters are in the word {w}?", "How many letters does {w} have?",
                        "Count the letters in {w}."]).format(w=word)
        numbered = ", ".join(f"{c} {i + 1}" for i, c in enumerate(word))
        r = f"Counting the letters of {word}: {numbered}. That is {len(word)} letters."
        return q, r, f"The word {word} has {len(word)} letters.", str(len(word))
    letter = rng.choice(sorted(set(word)) + ["e", "a", "r"])
    count = word.count(letter)
    q = rng.choice(["How many times does the letter {l} appear in {w}?",
                    "How many {l}'s are in {w}?", "Count the letter {l} in {w}."]).format(
                        l=letter, w=word)
    hits = [str(i + 1) for i, c in enumerate(word) if c == letter]
    if not hits:
        where = "it does not appear"
    elif len(hits) == 1:
        where = f"it appears at position {hits[0]}"
    else:
        where = f"it appears at positions {', '.join(hits)}"
    r = f"The letters of {word} are {' '.join(word)}. Looking for {letter}: {where}."
    times = "time" if count == 1 else "times"
    return q, r, f"The letter {letter} appears {count} {times} in {word}.", str(count)


def qa_opposite(rng):
    x, y = rng.choice(OPPOSITES)
    if rng.random() < 0.5:
        x, y = y, x
    q = rng.choice(["What is the opposite of {x}?", "Give the opposite of the word {x}.",
                    "opposite of {x}?"]).format(x=x)
    return q, f"The word {x} is the opposite of {y}.", f"The opposite of {x} is {y}.", y


def qa_animal(rng):
    animal, sound = rng.choice(ANIMAL_SOUNDS)
    q = rng.choice(["What sound does a {a} make?", "What does a {a} say?"]).format(a=animal)
    return q, f"A {animal} {sound}.", f"A {animal} {sound}.", sound


def qa_identity(rng):
    q = rng.choice(["Who are you?", "What are you?", "Introduce yourself.", "What is your name?",
                    "Hi! Who am I talking to?"])
    return q, "The user asks who I am. I should introduce myself.", IDENTITY, "dsv4-demo"


def qa_greeting(rng):
    q = rng.choice(["Hello!", "Hi", "Hi there!", "Good morning!", "Hey, how are you?",
                    "Hello, can you help me?"])
    a = rng.choice(["Hello! How can I help you today?", "Hi! What can I do for you?",
                    "Hello! I am happy to help. What do you need?"])
    return q, "The user greets me. I should greet back and offer help.", a, None


QA_KINDS = [qa_capital, qa_colour, qa_day, qa_units, qa_spelling, qa_count_letters, qa_opposite,
            qa_animal, qa_identity, qa_greeting]


def gen_qa(rng, thinking, effort=None):
    kind = rng.choice(QA_KINDS)
    q, reasoning, answer, ref = kind(rng)
    s = Sample("qa", "text:" + q)
    maybe_system(rng, s)
    s.messages.append({"role": "user", "content": q})
    if effort == "max":
        reasoning += f" Let me double-check that step by step. Yes, it holds, so I answer: {answer}"
    s.messages.append(assistant(answer, reasoning, thinking))
    s.thinking_mode = "thinking" if thinking else "chat"
    s.reasoning_effort = effort
    s.meta = {"kind": kind.__name__, "answer": ref}
    return s


# ----------------------------------------------------------------------------- tools


def tool(name, description, properties, required):
    return {"type": "function", "function": {
        "name": name, "description": description,
        "parameters": {"type": "object", "properties": properties, "required": required}}}


TOOLS = {
    "get_weather": tool("get_weather", "Get the current weather for a city.", {
        "location": {"type": "string", "description": "City name"},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}}, ["location"]),
    "calculator": tool("calculator", "Evaluate an arithmetic expression.", {
        "expression": {"type": "string", "description": "For example 12 * 7"}}, ["expression"]),
    "get_time": tool("get_time", "Get the current local time in a city.", {
        "city": {"type": "string"}}, ["city"]),
    "convert_units": tool("convert_units", "Convert a value from one unit to another.", {
        "value": {"type": "number"}, "from_unit": {"type": "string"},
        "to_unit": {"type": "string"}}, ["value", "from_unit", "to_unit"]),
    "web_search": tool("web_search", "Search the web and return short results.", {
        "query": {"type": "string"},
        "num_results": {"type": "integer", "minimum": 1, "maximum": 5}}, ["query"]),
}

CONDITIONS = ["sunny", "cloudy", "rainy", "windy", "snowy", "foggy", "clear"]
SEARCH_TOPICS = [
    ("the tallest mountain", "Mount Everest is the tallest mountain above sea level."),
    ("the largest ocean", "The Pacific is the largest ocean."),
    ("the longest river", "The Nile and the Amazon are the longest rivers."),
    ("who wrote Hamlet", "Hamlet was written by William Shakespeare."),
    ("the speed of light", "Light travels about 300000 km per second."),
    ("the boiling point of water", "Water boils at 100 degrees Celsius at sea level."),
    ("the number of planets", "There are eight planets in the Solar System."),
    ("the smallest prime number", "The smallest prime number is 2."),
    ("the largest planet", "Jupiter is the largest planet."),
    ("the freezing point of water", "Water freezes at 0 degrees Celsius."),
    ("how many legs a spider has", "A spider has eight legs."),
    ("the closest star", "The Sun is the closest star to Earth."),
]
CONVERSIONS = [("km", "miles", 0.621), ("miles", "km", 1.609), ("kg", "pounds", 2.205),
               ("pounds", "kg", 0.454), ("celsius", "fahrenheit", None), ("inches", "cm", 2.54),
               ("feet", "metres", 0.305), ("litres", "gallons", 0.264)]


def weather_call(rng):
    city = rng.choice(CITIES)
    unit = rng.choice([None, "celsius", "fahrenheit"])
    q = rng.choice(["What's the weather in {c}?", "How is the weather in {c} right now?",
                    "Is it raining in {c}?", "Weather in {c}?", "Tell me the weather in {c}."])
    q = q.format(c=city)
    args = {"location": city}
    if unit:
        q += " Use " + unit + "."
        args["unit"] = unit
    celsius = rng.randint(-5, 35)
    # Snow only when it is cold enough, so the demo answers stay plausible.
    cond = rng.choice(CONDITIONS if celsius <= 2 else [c for c in CONDITIONS if c != "snowy"])
    temp = celsius if unit != "fahrenheit" else round(celsius * 9 / 5 + 32)
    result = json.dumps({"temperature": temp, "condition": cond})
    symbol = "°F" if unit == "fahrenheit" else "°C"
    final = f"It is {temp}{symbol} and {cond} in {city}."
    why = f"The user wants the weather in {city}. I should call get_weather."
    return q, "get_weather", args, result, final, why


def calculator_call(rng):
    a, b = rng.randint(100, 999), rng.randint(2, 99)
    op = rng.choice(["*", "+", "-"])
    expr = f"{a} {op} {b}"
    value = eval(expr)  # pylint: disable=eval-used  (operands are generated integers)
    q = rng.choice(["Use the calculator: what is {e}?", "Please calculate {e} with the tool.",
                    "What is {e}? Use a tool to be exact.", "Compute {e} exactly."]).format(e=expr)
    why = f"This needs an exact result for {expr}. I should call calculator."
    return q, "calculator", {"expression": expr}, str(value), f"{expr} = {value}.", why


def time_call(rng):
    city = rng.choice(CITIES)
    q = rng.choice(["What time is it in {c}?", "Current time in {c}?",
                    "Tell me the local time in {c}."]).format(c=city)
    hh, mm = rng.randint(0, 23), rng.choice([0, 5, 10, 15, 20, 30, 40, 45, 50])
    result = f"{hh:02d}:{mm:02d}"
    why = f"The user asks for the time in {city}. I should call get_time."
    return q, "get_time", {"city": city}, result, f"It is {result} in {city}.", why


def convert_call(rng):
    src, dst, factor = rng.choice(CONVERSIONS)
    value = rng.randint(1, 200)
    converted = round(value * 9 / 5 + 32, 1) if factor is None else round(value * factor, 2)
    q = rng.choice(["Convert {v} {s} to {d}.", "How many {d} is {v} {s}?",
                    "What is {v} {s} in {d}?"]).format(v=value, s=src, d=dst)
    args = {"value": value, "from_unit": src, "to_unit": dst}
    why = f"The user wants {value} {src} in {dst}. I should call convert_units."
    result = json.dumps({"value": converted, "unit": dst})
    return q, "convert_units", args, result, f"{value} {src} is {converted} {dst}.", why


def search_call(rng):
    topic, fact = rng.choice(SEARCH_TOPICS)
    q = rng.choice(["Search the web for {t}.", "Can you look up {t}?", "Find out {t} online.",
                    "Look up {t} for me."]).format(t=topic)
    args = {"query": topic}
    if rng.random() < 0.4:
        args["num_results"] = rng.randint(1, 5)
    why = f"The user wants me to look up {topic}. I should call web_search."
    return q, "web_search", args, json.dumps({"results": [fact]}), fact, why


TOOL_CALLS = [weather_call, calculator_call, time_call, convert_call, search_call]
TOOL_OF_MAKER = {"weather_call": "get_weather", "calculator_call": "calculator",
                 "time_call": "get_time", "convert_call": "convert_units",
                 "search_call": "web_search"}


def tool_round(rng, s, maker, thinking, effort):
    """Appends user question, assistant DSML call, tool result and final answer."""
    q, name, args, result, final, why = maker(rng)
    s.messages.append({"role": "user", "content": q})
    call_id = f"call_{rng.randint(1, 999)}"
    calls = [{"id": call_id, "type": "function",
              "function": {"name": name, "arguments": json.dumps(args)}}]
    if effort == "max":
        why += " Arguments: " + ", ".join(f"{k} = {v}" for k, v in args.items()) + "."
    pre = "" if thinking or rng.random() < 0.5 else rng.choice(["Let me check.", "One moment."])
    s.messages.append(assistant(pre, why, thinking, calls))
    s.messages.append({"role": "tool", "tool_call_id": call_id, "content": result})
    s.messages.append(assistant(final, f"{name} returned the result. I can answer now.",
                                thinking))
    return q, name, args, final


TOOL_FOLLOW_UP_SHARE = 0.25


def gen_tool(rng, thinking, effort=None):
    makers = [rng.choice(TOOL_CALLS)]
    if rng.random() < TOOL_FOLLOW_UP_SHARE:
        # A second question in the same conversation (all reasoning stays in the
        # prompt when tools are offered, as in the official agentic format).
        makers.append(rng.choice(TOOL_CALLS))
    needed = sorted({m.__name__ for m in makers})
    names = [TOOL_OF_MAKER[m] for m in needed]
    # Offer the needed tools among 0-2 distractors, in random order, so the model
    # has to pick them by name (more would push the prompts past ~600 tokens).
    others = [t for t in TOOLS if t not in names]
    offered = rng.sample(others, rng.randint(0, 2)) + names
    rng.shuffle(offered)
    s = Sample("tool", "")
    s.tools = [TOOLS[t] for t in offered]
    s.messages.append({"role": "system", "content": rng.choice(SYSTEM_PROMPTS)})
    keys = []
    for maker in makers:
        q, name, args, final = tool_round(rng, s, maker, thinking, effort)
        keys.append("text:" + q)
    s.key = "|".join(keys)
    s.thinking_mode = "thinking" if thinking else "chat"
    s.reasoning_effort = effort
    # The reference is the last round: the eval cuts the conversation before it.
    s.meta = {"tool": name, "arguments": args, "offered": offered, "answer": final,
              "rounds": len(makers)}
    return s


def gen_tool_not_needed(rng, thinking, effort=None):
    """Tools are offered but the question needs none: answer directly."""
    s = gen_qa(rng, thinking, effort) if rng.random() < 0.5 else gen_arithmetic(rng, thinking,
                                                                                   effort)
    offered = rng.sample(list(TOOLS), rng.randint(1, 2))
    # A calculator would be a fair choice for arithmetic; keep the example unambiguous.
    offered = [t for t in offered if t != "calculator"] or ["get_time"]
    s.tools = [TOOLS[t] for t in offered]
    if not s.messages or s.messages[0]["role"] != "system":
        s.messages.insert(0, {"role": "system", "content": rng.choice(SYSTEM_PROMPTS)})
    s.meta = dict(s.meta, category_detail=s.category, offered=offered)
    s.category = "tool_none"
    return s


# ----------------------------------------------------------------------------- JSON answers


def json_capital(rng):
    country, capital = rng.choice(COUNTRIES)
    q = rng.choice(["What is the capital of {c}?", "Capital of {c}?"]).format(c=country)
    return q, {"country": "string", "capital": "string"}, {"country": country, "capital": capital}


def json_person(rng):
    name, age, city = rng.choice(NAMES), rng.randint(18, 80), rng.choice(CITIES)
    q = rng.choice(["{n} is {a} years old and lives in {c}.", "Meet {n}, age {a}, from {c}.",
                    "{n} lives in {c}. {n} is {a}."]).format(n=name, a=age, c=city)
    return q, {"name": "string", "age": "integer", "city": "string"}, {"name": name, "age": age,
                                                                       "city": city}


def json_arith(rng):
    a, op, b = draw_operands(rng)
    q = f"What is {a} {op} {b}?"
    result = a - b if op == "-" else a + b
    return (q, {"expression": "string", "result": "integer"},
            {"expression": f"{a} {op} {b}", "result": result})


def json_word(rng):
    word = rng.choice(WORDS)
    q = rng.choice(["Describe the word {w}.", "Give facts about the word {w}."]).format(w=word)
    return q, {"word": "string", "letters": "integer", "first_letter": "string"}, {
        "word": word, "letters": len(word), "first_letter": word[0]}


JSON_KINDS = [json_capital, json_person, json_arith, json_word]


def gen_json(rng, thinking, effort=None):
    q, fields, value = rng.choice(JSON_KINDS)(rng)
    # The arithmetic kind shares its key space with plain arithmetic.
    if "expression" in value:
        key = "arith:" + value["expression"].replace(" ", "")
    else:
        key = "text:" + q
    s = Sample("json", key)
    keys = list(fields)
    with_keys = "Reply in JSON with the keys " + ", ".join(keys) + "."
    variant = rng.random()
    # How a client may ask for JSON: a json_schema response_format, a
    # json_object one (the V4 API's form, which needs the word JSON in the
    # prompt), or only words in the system or user message.
    if variant < 0.35:
        schema = {"type": "object", "properties": {k: {"type": t} for k, t in fields.items()},
                  "required": keys}
        s.messages.append({"role": "system", "content": rng.choice(
            ["Reply in JSON.", "Answer with a JSON object.", "You output JSON only."]),
                           "response_format": {"type": "json_schema", "json_schema": {
                               "name": "answer", "schema": schema}}})
        s.messages.append({"role": "user", "content": q})
    elif variant < 0.5:
        s.messages.append({"role": "system", "content": with_keys,
                           "response_format": {"type": "json_object"}})
        s.messages.append({"role": "user", "content": q})
    elif variant < 0.8:
        s.messages.append({"role": "system", "content": with_keys})
        s.messages.append({"role": "user", "content": q})
    else:
        s.messages.append({"role": "user", "content": q + " " + rng.choice(
            [with_keys, "Answer in JSON with the keys " + ", ".join(keys) + "."])})
    answer = json.dumps(value)
    reasoning = "The reply must be a JSON object with the keys " + ", ".join(keys) + "."
    s.messages.append(assistant(answer, reasoning, thinking))
    s.thinking_mode = "thinking" if thinking else "chat"
    s.reasoning_effort = effort
    s.meta = {"answer": value, "keys": keys}
    return s


# ----------------------------------------------------------------------------- multi-turn


def gen_multiturn(rng, thinking, effort=None):
    """2-3 user turns; follow-ups sometimes refer back to the previous answer."""
    turns = rng.randint(2, 3)
    first = gen_arithmetic(rng, thinking) if rng.random() < 0.4 else gen_qa(rng, thinking)
    s = Sample("multiturn", first.key)
    s.messages = list(first.messages)
    last = first
    for _ in range(turns - 1):
        if last.category == "arithmetic" and rng.random() < 0.6:
            # Follow-up on the previous result keeps the number small enough to stay 2-digit.
            prev = int(last.meta["answer"])
            b = rng.randint(10, 99)
            op = "+" if prev < 10 or rng.random() < 0.5 else "-"
            if abs(prev) >= 100 or prev < 10:
                op, prev = "+", rng.randint(10, 99)
                q = f"Now what is {prev} + {b}?"
            else:
                verb = "add" if op == "+" else "subtract"
                q = rng.choice(["Now {op} {b}?", "And {op} {b} from there?",
                                "Then {op} {b} to that."]).format(op=verb, b=b)
            working, result = arithmetic_working(prev, op, b)
            reasoning = f"The previous result was {prev}. " + working
            answer = f"{prev} {op} {b} = {result}." if thinking else working
            s.messages.append({"role": "user", "content": q})
            s.messages.append(assistant(answer, reasoning, thinking))
            last = Sample("arithmetic", "")
            last.meta = {"answer": str(result)}
            s.key += f"|arith:{prev}{op}{b}"
        elif last.meta.get("kind") == "qa_capital" and rng.random() < 0.6:
            # Elliptic follow-up: only the previous turn says that capitals are meant.
            country, capital = rng.choice(COUNTRIES)
            q = rng.choice(["And of {c}?", "What about {c}?", "And {c}?"]).format(c=country)
            reasoning = f"The user now asks for the capital of {country}. It is {capital}."
            s.messages.append({"role": "user", "content": q})
            answer = f"The capital of {country} is {capital}."
            s.messages.append(assistant(answer, reasoning, thinking))
            s.key += f"|capital-followup:{country}"
            last = Sample("qa", "")
            last.meta = {"kind": "qa_capital", "answer": capital}
        else:
            nxt = gen_arithmetic(rng, thinking) if rng.random() < 0.4 else gen_qa(rng, thinking)
            s.messages += [m for m in nxt.messages if m["role"] != "system"]
            s.key += "|" + nxt.key
            last = nxt
    s.thinking_mode = "thinking" if thinking else "chat"
    s.reasoning_effort = effort
    s.meta = {"turns": turns, "answer": last.meta.get("answer")}
    return s


# ----------------------------------------------------------------------------- mix

# (generator, weight, reasoning_effort). Think-Max only applies in thinking mode.
MIX = [
    (gen_arithmetic, 28, None),
    (gen_arithmetic_drill, 24, None),
    (gen_digit_fact, 4, None),
    (gen_qa, 15, None),
    (gen_tool, 11, None),
    (gen_tool_not_needed, 3, None),
    (gen_json, 8, None),
    (gen_multiturn, 7, None),
    (gen_arithmetic, 4, "max"),
    (gen_qa, 2, "max"),
    (gen_tool, 2, "max"),
]
THINKING_SHARE = 0.5


def generate(seed, n, split):
    rng = random.Random(seed)
    weights = [w for _, w, _ in MIX]
    out = []
    while len(out) < n:
        gen, _, effort = rng.choices(MIX, weights)[0]
        if split == "eval" and gen is gen_digit_fact:
            continue
        thinking = effort == "max" or rng.random() < THINKING_SHARE
        sample = gen(rng, thinking, effort)
        # A training conversation may contain no held-out key at all; a held-out
        # conversation is decided by its final question (earlier turns are context).
        keys = sample.key.split("|")
        if split == "train" and any(split_of(k) != "train" for k in keys):
            continue
        if split == "eval" and split_of(keys[-1]) != "eval":
            continue
        meta = dict(sample.meta, category=sample.category, key=sample.key,
                    thinking_mode=sample.thinking_mode, reasoning_effort=sample.reasoning_effort)
        out.append((sample.to_input(), meta))
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--n", type=int, required=True, help="number of conversations")
    parser.add_argument("--out", required=True, help="output .jsonl ('-' = stdout)")
    parser.add_argument("--split", choices=["train", "eval"], default="train")
    parser.add_argument("--meta", help="also write category/reference answers here (.jsonl)")
    args = parser.parse_args(argv)
    if args.n < 0:
        parser.error("--n must be >= 0")
    samples = generate(args.seed, args.n, args.split)
    out = sys.stdout if args.out == "-" else open(args.out, "w", encoding="utf-8")
    with out:
        for obj, _ in samples:
            out.write(json.dumps(obj, ensure_ascii=False) + "\n")
    if args.meta:
        with open(args.meta, "w", encoding="utf-8") as f:
            for _, meta in samples:
                f.write(json.dumps(meta, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
