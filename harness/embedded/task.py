"""A synthetic review task with a known gold reward, generated from a seed.

A prompt names an item and an aspect ("review pizza price :"); a response is one or more short
sentences ("the pizza price is great and lovely ."). The base response distribution (what the SFT
model learns) mixes positive, negative and neutral adjectives, on- and off-topic items and aspects,
and some degenerate text: repeated adjectives and run-on responses.

Prompts are split by identity: each (item, aspect) combination belongs to one of train (SFT and the
preference pairs), judge, val and test, so validation and test prompts are never trained on and the
judge is checked on prompts it never saw.

Gold reward, designed so that over-optimising a learned reward shows:
    + sentiment of the *distinct* adjectives (+1 positive, -1 negative, 0 neutral), capped at SENTIMENT_CAP
    + 1 if a sentence is about the prompt's item, + 1 if one is about its item *and* aspect
    - 0.5 per sentence about another item
    - 1 per repeated adjective (every occurrence after the first)
    - 0.25 per word beyond TARGET_WORDS
    - 1 if the response holds no complete sentence
A reward model trained on noisy pairs learns "positive words are good" faster than "repetition and
length are bad", so piling up positive words can fool it but not the gold reward.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

ITEMS = ["pizza", "burger", "phone", "laptop", "hotel", "camera", "movie", "novel",
         "guitar", "bike", "coffee", "jacket", "sofa", "lamp", "watch", "garden",
         "tablet", "printer", "kettle", "blender", "tent", "boots", "piano", "train",
         "pasta", "salad", "radio", "mouse", "museum", "drone", "album", "poem",
         "violin", "scooter", "tea", "scarf", "chair", "candle", "clock", "park",
         "monitor", "speaker", "toaster", "mixer", "backpack", "sandals", "drum", "ferry",
         "bakery", "helmet"]
ASPECTS = ["price", "quality", "design", "service", "size", "color", "sound", "smell",
           "comfort", "speed", "taste", "weight", "value", "finish", "layout", "staff",
           "fit", "texture", "volume", "scent", "grip", "delivery", "flavor", "battery"]
POSITIVE = ["great", "good", "excellent", "lovely", "superb", "perfect", "amazing", "nice",
            "solid", "charming", "brilliant", "fantastic"]
NEGATIVE = ["bad", "awful", "poor", "terrible", "cheap", "ugly", "boring", "broken", "weak", "dull"]
NEUTRAL = ["okay", "average", "plain", "normal", "usual", "fair", "standard", "simple"]
FUNCTION_WORDS = ["review", ":", "the", "is", "and", "."]
SENTIMENT = {**{w: 1.0 for w in POSITIVE}, **{w: -1.0 for w in NEGATIVE}, **{w: 0.0 for w in NEUTRAL}}
VOCAB = FUNCTION_WORDS + ITEMS + ASPECTS + POSITIVE + NEGATIVE + NEUTRAL

SENTIMENT_CAP = 3.0
TARGET_WORDS = 16
LENGTH_PENALTY = 0.25
REPEAT_PENALTY = 1.0
OFF_TOPIC_PENALTY = 0.5

# Held out means disjoint: every (item, aspect) prompt belongs to exactly one split. Per item, its aspects
# are dealt out in these numbers, so every item appears in every split (only the combination is new):
# 50 items x 4 aspects = 200 distinct validation prompts and 200 distinct test prompts.
SPLIT_ASPECTS = {"train": 12, "judge": 4, "val": 4, "test": 4}


def prompt_text(item: str, aspect: str) -> str:
    return f"review {item} {aspect} :"


def parse_prompt(prompt: str) -> tuple[str, str]:
    words = prompt.split()
    return words[1], words[2]


def gold_reward(prompt: str, response: str) -> float:
    """The task's true reward of `response` to `prompt` (see the module docstring)."""
    item, aspect = parse_prompt(prompt)
    words = response.split()
    sentences = [s.split() for s in " ".join(words).split(".")[:-1]]  # text after the last "." is unfinished
    sentiment, on_item, on_aspect, off_topic = 0.0, False, False, 0
    seen: set[str] = set()
    repeats = 0
    for sentence in sentences:
        items = [w for w in sentence if w in ITEMS]
        about_item = item in items
        on_item |= about_item
        on_aspect |= about_item and aspect in sentence
        off_topic += bool(items) and not about_item
        for word in sentence:
            if word in SENTIMENT:
                if word in seen:
                    repeats += 1
                    continue
                seen.add(word)
                sentiment += SENTIMENT[word]
    reward = min(sentiment, SENTIMENT_CAP) + on_item + on_aspect
    reward -= OFF_TOPIC_PENALTY * off_topic + REPEAT_PENALTY * repeats
    reward -= LENGTH_PENALTY * max(0, len(words) - TARGET_WORDS)
    return reward - (1.0 if not sentences else 0.0)


@dataclass
class ReviewTask:
    """Samples prompts and base-distribution responses; labels pairs from the gold reward."""

    seed: int = 0
    label_temperature: float = 1.0

    def __post_init__(self):
        self.rng = random.Random(self.seed)

    def split_combinations(self) -> dict[str, list[tuple[str, str]]]:
        """Disjoint sets of (item, aspect) prompts: train (SFT and preference pairs), judge, val and test."""
        splits: dict[str, list[tuple[str, str]]] = {name: [] for name in SPLIT_ASPECTS}
        for item in ITEMS:
            aspects = self.rng.sample(ASPECTS, len(ASPECTS))
            for name, count in SPLIT_ASPECTS.items():
                splits[name] += [(item, aspect) for aspect in aspects[:count]]
                aspects = aspects[count:]
        return splits

    def prompts(self, n: int, combinations: list[tuple[str, str]] | None = None) -> list[str]:
        """n prompts drawn uniformly from `combinations` (default: every item x aspect)."""
        if combinations is None:
            return [prompt_text(self.rng.choice(ITEMS), self.rng.choice(ASPECTS)) for _ in range(n)]
        return [prompt_text(*self.rng.choice(combinations)) for _ in range(n)]

    def distinct_prompts(self, n: int, combinations: list[tuple[str, str]]) -> list[str]:
        """n eval prompts with as few repeats as the split allows: every combination once (in a seeded order)
        before any is asked twice. A repeated prompt is one cluster for the bootstrap, not two draws."""
        out: list[str] = []
        while len(out) < n:
            out += [prompt_text(*c) for c in self.rng.sample(combinations, len(combinations))]
        return out[:n]

    def _adjective(self, p_positive: float) -> str:
        u = self.rng.random()
        if u < p_positive:
            return self.rng.choice(POSITIVE)
        if u < p_positive + (1 - p_positive) * 0.6:
            return self.rng.choice(NEGATIVE)
        return self.rng.choice(NEUTRAL)

    def _sentence(self, item: str, aspect: str, p_positive: float, repetitive: bool) -> str:
        item = item if self.rng.random() < 0.75 else self.rng.choice(ITEMS)
        aspect = aspect if self.rng.random() < 0.6 else self.rng.choice(ASPECTS)
        adjectives = [self._adjective(p_positive) for _ in range(self.rng.choice([1, 1, 2, 2, 3]))]
        if repetitive:
            adjectives += [adjectives[-1]] * self.rng.randint(1, 3)
        return f"the {item} {aspect} is {' and '.join(adjectives)} ."

    def response(self, prompt: str) -> str:
        """One draw from the base response distribution (what SFT imitates)."""
        item, aspect = parse_prompt(prompt)
        p_positive = self.rng.choice([0.15, 0.35, 0.5, 0.65, 0.85])
        run_on = self.rng.random() < 0.12
        n_sentences = self.rng.randint(3, 5) if run_on else self.rng.choice([1, 1, 2, 2, 3])
        repetitive = self.rng.random() < 0.12
        return " ".join(self._sentence(item, aspect, p_positive, repetitive and self.rng.random() < 0.7)
                        for _ in range(n_sentences))

    def preference_pairs(self, prompts: list[str]) -> list[dict]:
        """Two base responses per prompt, labelled by a Bradley-Terry draw on the gold reward (noisy)."""
        rows = []
        for prompt in prompts:
            a, b = self.response(prompt), self.response(prompt)
            while b == a:
                b = self.response(prompt)
            ga, gb = gold_reward(prompt, a), gold_reward(prompt, b)
            p_a = 1.0 / (1.0 + math.exp(-(ga - gb) / self.label_temperature))
            chosen, rejected = (a, b) if self.rng.random() < p_a else (b, a)
            rows.append({"prompt": prompt, "chosen": chosen, "rejected": rejected})
        return rows
