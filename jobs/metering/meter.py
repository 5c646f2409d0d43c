"""The budget guard of one job: reservations before a call, settlement after it.

The gateway asks `Meter.reserve` before it forwards a call and `Meter.settle` after. A reservation holds an upper
bound of what the call can cost (its prompt's bound plus the output length granted), so concurrent calls from one
job can never together overshoot its budget. Prompt tokens are not known before the node answers; a token is at
least one byte of text for the tokenizers in use (byte-level BPE), so the prompt's byte length plus a template
allowance bounds them from above.
"""
import threading
from dataclasses import dataclass

from models_catalog.nodes import Usage

# Chat templates add role markers and sometimes a default system prompt around each message.
TEMPLATE_TOKENS_PER_CALL = 64
TEMPLATE_TOKENS_PER_MESSAGE = 8


class BudgetExhausted(Exception):
    def __init__(self, remaining: int):
        super().__init__(f"The job's token budget is spent ({remaining} tokens left, too few for this call).")
        self.remaining = remaining


@dataclass(frozen=True)
class Reservation:
    held: int
    max_tokens: int


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
        self._spent = 0
        self._held = 0
        self._lock = threading.Lock()

    def reserve(self, *, prompt_tokens_bound: int, requested: int | None) -> Reservation:
        """Grant the call an output length; raises BudgetExhausted when not one token can be granted."""
        wanted = min(requested or self.max_output_tokens, self.max_output_tokens)
        with self._lock:
            if self.budget is None:
                return Reservation(held=0, max_tokens=max(wanted, 1))
            room = self.budget - self._spent - self._held - prompt_tokens_bound
            if room < 1:
                raise BudgetExhausted(max(0, self.budget - self._spent - self._held))
            granted = max(1, min(wanted, room))
            held = prompt_tokens_bound + granted
            self._held += held
            return Reservation(held=held, max_tokens=granted)

    def settle(self, reservation: Reservation, usage: Usage | None) -> None:
        """Release a reservation and count what the node reported. A call with unknown counts keeps its whole
        reservation as spent, so the budget stays a promise even then."""
        with self._lock:
            self._held -= reservation.held
            self.calls += 1
            if usage is None or not usage.known:
                self.unmetered_calls += 1
                self._spent += reservation.held
                return
            self.prompt_tokens += usage.prompt_tokens
            self.completion_tokens += usage.completion_tokens
            self._spent += usage.prompt_tokens + usage.completion_tokens

    def snapshot(self) -> dict[str, int | None]:
        with self._lock:
            remaining = None if self.budget is None else max(0, self.budget - self._spent - self._held)
            return {
                "promptTokens": self.prompt_tokens,
                "completionTokens": self.completion_tokens,
                "totalTokens": self.prompt_tokens + self.completion_tokens,
                "llmCalls": self.calls,
                "unmeteredCalls": self.unmetered_calls,
                "tokenBudget": self.budget,
                "remainingTokens": remaining,
            }
