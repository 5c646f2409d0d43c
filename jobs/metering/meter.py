"""The budget guard of one job: reservations before a call, settlement after it.

The gateway asks `Meter.reserve` before it forwards a call and `Meter.settle` after. A reservation holds what the
call can cost at most: its prompt's tokens plus the output length granted, so concurrent calls from one job can
never together overshoot its budget. The prompt's tokens are counted exactly by the node's tokenizer where it has
one (llama.cpp, vLLM); elsewhere they are bounded from above: a token is at least one byte of text for the
tokenizers in use (byte-level BPE), so the prompt's byte length plus a template allowance bounds them.

A call that finds no room waits for the calls in flight to settle (they usually spend less than they hold), and
is refused only when nothing is in flight and what is settled leaves no room for it, or its wait ends.
"""
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from nodeclient import Usage

# Chat templates add role markers and sometimes a default system prompt around each message.
TEMPLATE_TOKENS_PER_CALL = 64
TEMPLATE_TOKENS_PER_MESSAGE = 8
# How often a waiting call looks whether its script or its job is gone.
WAIT_CHECK_SECONDS = 0.5


class BudgetExhausted(Exception):
    def __init__(self, remaining: int, *, waited: bool = False):
        why = "too few for this call" + (", and none were freed in time" if waited else "")
        super().__init__(f"The job's token budget is spent ({remaining} tokens left, {why}).")
        self.remaining = remaining


class WaitAbandoned(Exception):
    """A call stopped waiting for room because its script hung up or its job ended."""


@dataclass(frozen=True)
class Reservation:
    held: int
    max_tokens: int
    prompt_tokens: int  # what was held for the prompt: the node's count, or a bound (see `prompt_exact`)
    prompt_exact: bool = False


def prompt_bound(texts: list[str]) -> int:
    """An upper bound of the prompt tokens for a call whose prompt is made of `texts`."""
    return (TEMPLATE_TOKENS_PER_CALL + TEMPLATE_TOKENS_PER_MESSAGE * len(texts)
            + sum(len(text.encode("utf-8")) for text in texts))


class Meter:
    """The running totals and budget of one job, shared by the gateway's request threads."""

    def __init__(self, *, budget: int | None, max_output_tokens: int):
        self.budget = budget
        self.max_output_tokens = max_output_tokens
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.calls = 0
        self.unmetered_calls = 0
        self.estimated_calls = 0
        self._spent = 0
        self._held = 0
        self._changed = threading.Condition()

    def reserve(self, *, prompt_tokens: int, requested: int | None, prompt_exact: bool = False,
                wait: float = 0.0, abandon: Callable[[], bool] = lambda: False) -> Reservation:
        """Grant the call an output length. When the budget has no room now but calls are in flight, wait (at most
        `wait` seconds) for them to settle. Raises BudgetExhausted when not one token can be granted, and
        WaitAbandoned when `abandon()` turns true while waiting."""
        wanted = min(requested or self.max_output_tokens, self.max_output_tokens)
        deadline = time.monotonic() + wait
        with self._changed:
            while True:
                if self.budget is None:
                    return Reservation(held=0, max_tokens=max(wanted, 1), prompt_tokens=prompt_tokens,
                                       prompt_exact=prompt_exact)
                room = self.budget - self._spent - self._held - prompt_tokens
                if room >= 1:
                    granted = min(wanted, room)
                    held = prompt_tokens + granted
                    self._held += held
                    return Reservation(held=held, max_tokens=granted, prompt_tokens=prompt_tokens,
                                       prompt_exact=prompt_exact)
                left = deadline - time.monotonic()
                if self._held == 0 or left <= 0:
                    raise BudgetExhausted(max(0, self.budget - self._spent - self._held), waited=self._held > 0)
                if abandon():
                    raise WaitAbandoned()
                self._changed.wait(min(left, WAIT_CHECK_SECONDS))

    def release(self, reservation: Reservation) -> None:
        """Give a reservation back unused: the call was never forwarded."""
        with self._changed:
            self._held -= reservation.held
            self._changed.notify_all()

    def settle(self, reservation: Reservation, usage: Usage | None, *, estimated: bool = False) -> None:
        """Release a reservation and count the call's tokens: the node's, or the gateway's estimate of them
        (`estimated`). A call with unknown counts keeps its whole reservation as spent, so the budget stays a
        promise even then."""
        with self._changed:
            self._held -= reservation.held
            self.calls += 1
            self._changed.notify_all()
            if usage is None or not usage.known:
                self.unmetered_calls += 1
                self._spent += reservation.held
                return
            self.estimated_calls += int(estimated)
            self.prompt_tokens += usage.prompt_tokens
            self.completion_tokens += usage.completion_tokens
            self._spent += usage.prompt_tokens + usage.completion_tokens

    def snapshot(self) -> dict[str, int | None]:
        with self._changed:
            remaining = None if self.budget is None else max(0, self.budget - self._spent - self._held)
            return {
                "promptTokens": self.prompt_tokens,
                "completionTokens": self.completion_tokens,
                "totalTokens": self.prompt_tokens + self.completion_tokens,
                "llmCalls": self.calls,
                "unmeteredCalls": self.unmetered_calls,
                "estimatedCalls": self.estimated_calls,
                "tokenBudget": self.budget,
                "remainingTokens": remaining,
            }
