"""The embedded offline task: a synthetic review-writing task with a known gold reward."""

from .task import ReviewTask, gold_reward

__all__ = ["ReviewTask", "gold_reward"]
