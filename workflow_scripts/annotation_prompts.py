"""The paper's three annotation prompts (docs/design.md#annotation), worded and sampled as the paper did.

Each step is a system instruction, few-shot examples sent the OpenAI way (system messages named
`example_user` / `example_assistant`; the local provider turns them into user / assistant turns)
and one user message. The paper's spelling in the examples ("abbrevations", "programing") is
kept on purpose: it is part of the prompt the paper's numbers came from.
"""
from __future__ import annotations

from dataclasses import dataclass

from .chat import ChatRequest, messages


@dataclass(frozen=True)
class Step:
    name: str
    system: str
    examples: tuple[tuple[str, str], ...]
    temperature: float
    top_p: float

    def request(self, user: str, seed: int, max_tokens: int, origin: tuple = ()) -> ChatRequest:
        shots = []
        for question, answer in self.examples:
            shots.append({"role": "system", "name": "example_user", "content": question})
            shots.append({"role": "system", "name": "example_assistant", "content": answer})
        return ChatRequest(
            messages=messages({"role": "system", "content": self.system}, *shots, {"role": "user", "content": user}),
            temperature=self.temperature,
            top_p=self.top_p,
            max_tokens=max_tokens,
            seed=seed,
            origin=origin,
        )


DESCRIBE = Step(
    name="describe",
    system=(
        "You are a neuron interpreter for neural networks. Each neuron looks for one particular "
        "concept/topic/theme/behavior/pattern. Look at some words the neuron activates for and summarize in a "
        "single concept/topic/theme/behavior/pattern what the neuron is looking for. Don't list examples of "
        "words and keep your summary as concise as possible. If you cannot summarize more than half of the "
        "given words within one clear concept/topic/theme/behavior/pattern, you should say 'Cannot Tell'."
    ),
    examples=(
        ("Words: January, terday, cember, April, July, September, December, Thursday, quished, November, Tuesday.",
         "dates."),
        ("Words: B., M., e., R., C., OK., A., H., D., S., J., al., p., T., N., W., G., a.C., or, St., K., a.m., L..",
         "abbrevations and acronyms."),
        ("Words: actual, literal, real, Real, optical, Physical, REAL, virtual, visual.",
         "perception of reality."),
        ("Words: Go, Python, C++, Java, c#, python3, cuda, java, javascript, basic.",
         "programing languages."),
        ("Words: 1950, 1980, 1985, 1958, 1850, 1980, 1960, 1940, 1984, 1948.",
         "years"),
    ),
    temperature=1.0,
    top_p=0.9,
)

TASK = Step(
    name="task",
    system=(
        "Which of the following assistant tasks can the given concept is used for?\n\nTasks: daily writing, "
        "literary writing, professional writing, solving math problems, coding, translation. Return 'None' if it "
        "cannot be used for any of the above tasks. If it could be used for multiple tasks, list all of them and "
        "seperate with ';'."
    ),
    examples=(
        ("Concept: Words are social media post tags.", "daily writing"),
        ("Concept: Words are Latex code for drawing a grouped barchart.", "professional writing"),
        ("Concept: Words are foreign words or names.", "translation"),
        ("Concept: Words are numbers.", "solving math problems"),
        ("Concept: Words are URLs.", "None"),
        ("Concept: Words are Words related to configuration files and web addresses.", "coding"),
        ("Concept: Words are rhyming words.", "literary writing"),
        ("Concept: Words are programming commands and terms.", "coding"),
    ),
    temperature=0.0,
    top_p=0.9,
)

LEVEL = Step(
    name="level",
    system=(
        "You are a linguist. Classify the provided concept into one of the following categories: Phonology, "
        "Morphology, Syntax, and Semantic."
    ),
    examples=(
        ("Concept: Words are dates.", "Semantic"),
        ("Concept: Words are perception of reality.", "Semantic"),
        ("Concept: Words are abbrevations and acronyms.", "Morphology"),
        ("Concept: Words are related to actions or activities.", "Syntax"),
        ("Concept: words are medical abbrivations.", "Semantic"),
        ("Concept: Words are URLs.", "Morphology"),
        ("Concept: Words are verbs.", "Syntax"),
        ("Concept: Words are adjective.", "Syntax"),
        ("Concept: Words are rhyming words.", "Phonology"),
        ("Concept: Words are programming languges.", "Semantic"),
    ),
    temperature=0.0,
    top_p=0.9,
)

STEPS = {step.name: step for step in (DESCRIBE, TASK, LEVEL)}


def words_message(top_k: list[str], words: int) -> str:
    """The describe step's question: the component's first `words` words, as the paper wrote it."""
    return "Words: {}.".format(", ".join(top_k[:words]))


def concept_message(summary: str, step: str) -> str:
    """The task and level steps' user message (the paper lower-cased the summary for tasks only)."""
    return "Concept: Words are " + (summary.lower() if step == "task" else summary)
