"""ipywidgets panels for the exercises and the claim checker (no model logic).

No kernel analogue. :class:`QuizPanel` shows the seeded problems of :mod:`iovalab.lab.exercises`: a
problem, an answer box (checked when you press Enter or click "Check"), the verdict, and "Show
derivation" for the simulator's working. :class:`ClaimPanel` is a text box for
:func:`iovalab.lab.claims.check` statements. Everything a panel shows comes from
:meth:`iovalab.lab.exercises.Problem.check` / :func:`iovalab.lab.claims.check`; the same calls work in a
plain cell.
"""

from __future__ import annotations

import html

import ipywidgets as w

from iovalab.lab.claims import check as check_claim
from iovalab.lab.claims import parse_statement
from iovalab.lab.exercises import KINDS, Problem, Verdict, generate

__all__ = ["QuizPanel", "ClaimPanel", "AnswerList"]


def _row() -> w.Layout:
    """A row of controls that wraps in a narrow column instead of running off its right edge."""
    return w.Layout(flex_flow="row wrap", align_items="center")


def _pre(text: str) -> str:
    return f"<pre style='white-space: pre-wrap; font-size: 90%'>{html.escape(text)}</pre>"


class QuizPanel:
    """Seed and count, a problem picker, the question, an answer box and its verdict.

    ``panel.widget`` is the ipywidgets box to display. Attributes used by tests and by callers:
    ``seed``, ``count``, ``picker``, ``answer``, ``check_button``, ``derivation_button``,
    ``next_button``, ``prev_button``, ``question``, ``feedback``, ``derivation``; ``problems`` (the
    generated :class:`~iovalab.lab.exercises.Problem` list) and ``current``.
    """

    def __init__(self, seed: int = 1, count: int = 10):
        self.problems: list[Problem] = []
        self.last: Verdict | None = None
        self.seed = w.IntText(value=seed, description="seed", layout=w.Layout(width="150px"))
        self.count = w.BoundedIntText(value=count, min=1, max=99, description="problems",
                                      layout=w.Layout(width="170px"))
        self.picker = w.Dropdown(description="problem", layout=w.Layout(width="420px"))
        self.prev_button = w.Button(description="◀", layout=w.Layout(width="40px"), tooltip="previous problem")
        self.next_button = w.Button(description="▶", layout=w.Layout(width="40px"), tooltip="next problem")
        self.question = w.HTML()
        self.answer = w.Text(placeholder="your answer (hex 0x... or decimal; lists comma-separated)",
                             continuous_update=False, layout=w.Layout(width="520px"))
        self.check_button = w.Button(description="Check", button_style="primary")
        self.derivation_button = w.Button(description="Show derivation")
        self.feedback = w.HTML()
        self.derivation = w.HTML()
        self.seed.observe(self._regenerate, names="value")
        self.count.observe(self._regenerate, names="value")
        self.picker.observe(self._show, names="value")
        self.answer.observe(self._on_answer, names="value")
        self.check_button.on_click(lambda _: self.check())
        self.derivation_button.on_click(lambda _: self.toggle_derivation())
        self.prev_button.on_click(lambda _: self._step(-1))
        self.next_button.on_click(lambda _: self._step(1))
        self.widget = w.VBox([
            w.HBox([self.seed, self.count, self.picker, self.prev_button, self.next_button], layout=_row()),
            self.question,
            w.HBox([self.answer, self.check_button, self.derivation_button], layout=_row()),
            self.feedback, self.derivation])
        self._regenerate()

    # ------------------------------------------------------------------------------------------
    @property
    def current(self) -> Problem | None:
        i = self.picker.value
        return self.problems[i] if self.problems and i is not None else None

    def _regenerate(self, _change=None) -> None:
        self.problems = generate(self.seed.value, self.count.value)
        self.picker.options = [(f"{p.id}  {KINDS[p.kind].title}", i) for i, p in enumerate(self.problems)]
        self.picker.value = 0
        self._show()

    def _show(self, _change=None) -> None:
        p = self.current
        self.answer.value = ""
        self.feedback.value = ""
        self.derivation.value = ""
        self.derivation_button.description = "Show derivation"
        self.last = None
        if p is not None:
            self.question.value = (f"<b>{html.escape(p.id)}</b> <i>[{html.escape(p.kind)}]</i><br>"
                                   f"{html.escape(p.question)}<br><small>check it in a shell: "
                                   f"<code>python -m iovalab quiz --check {p.id} ANSWER</code></small>")

    def _step(self, d: int) -> None:
        if self.problems:
            self.picker.value = (self.picker.value + d) % len(self.problems)

    def _on_answer(self, change) -> None:
        if str(change["new"]).strip():
            self.check()

    def check(self) -> Verdict | None:
        """Check the answer box against the simulator; fills ``feedback`` (and returns the verdict)."""
        p = self.current
        text = self.answer.value.strip()
        if p is None or not text:
            self.feedback.value = "<span style='color:gray'>type an answer first</span>"
            return None
        v = p.check(text)
        self.last = v
        if v.correct:
            self.feedback.value = f"<span style='color:green'>✓ correct: {html.escape(v.expected)}</span>"
        elif v.error:
            self.feedback.value = (f"<span style='color:#b36b00'>cannot read {html.escape(text)!s}: "
                                   f"{html.escape(v.error)}</span>")
        else:
            self.feedback.value = ("<span style='color:#c00'>✗ not what the simulator computes; try again, or "
                                   "click “Show derivation”</span>")
        return v

    def toggle_derivation(self) -> None:
        """Show (or hide) the simulator's answer and derivation for the current problem."""
        p = self.current
        if p is None:
            return
        if self.derivation.value:
            self.derivation.value = ""
            self.derivation_button.description = "Show derivation"
        else:
            self.derivation.value = _pre(f"answer: {p.answer}\n{p.derivation}")
            self.derivation_button.description = "Hide derivation"


class AnswerList:
    """Every answer of a seed's problems, hidden until the learner clicks "Show all answers".

    ``panel.widget`` is the box to display; ``button`` toggles ``answers`` (HTML, empty while hidden).
    With ``quiz=`` a :class:`QuizPanel`, the list follows that panel's seed and count (and hides
    itself again when they change)."""

    def __init__(self, seed: int = 1, count: int = 10, quiz: QuizPanel | None = None):
        self.quiz = quiz
        self._seed, self._count = seed, count
        self.button = w.Button(description="Show all answers", tooltip="only after trying")
        self.answers = w.HTML()
        self.button.on_click(lambda _: self.toggle())
        if quiz is not None:
            for c in (quiz.seed, quiz.count):
                c.observe(lambda _c: self.hide(), names="value")
        self.widget = w.VBox([self.button, self.answers])

    def _problems(self) -> list[Problem]:
        if self.quiz is not None:
            return self.quiz.problems
        return generate(self._seed, self._count)

    def hide(self) -> None:
        self.answers.value = ""
        self.button.description = "Show all answers"

    def toggle(self) -> None:
        if self.answers.value:
            self.hide()
            return
        self.answers.value = _pre("\n".join(f"{p.id}  {p.answer}" for p in self._problems()))
        self.button.description = "Hide all answers"


class ClaimPanel:
    """A text box for a claim such as ``try_alloc(phys=0x1234, size=0x3000) reserves 0x4000``; "Check"
    shows ✓/✗ and the derivation from :func:`iovalab.lab.claims.check`.

    Attributes: ``statement``, ``check_button``, ``result`` (HTML), ``last`` (the
    :class:`~iovalab.lab.claims.ClaimResult` or None)."""

    def __init__(self, statement: str = "try_alloc(phys=0x1234, size=0x3000) reserves 0x4000 and returns 0xffffc234"):
        self.last = None
        self.statement = w.Text(value=statement, continuous_update=False,
                                layout=w.Layout(width="760px", max_width="100%"))
        self.check_button = w.Button(description="Check claim", button_style="primary")
        self.result = w.HTML()
        self.check_button.on_click(lambda _: self.check())
        self.statement.observe(lambda _c: self.check(), names="value")
        self.widget = w.VBox([w.HBox([self.statement, self.check_button], layout=_row()), self.result])

    def check(self):
        text = self.statement.value.strip()
        try:
            parse_statement(text)
            self.last = check_claim(text, quiet=True)
        except (ValueError, TypeError) as e:
            self.last = None
            self.result.value = f"<span style='color:#b36b00'>{html.escape(str(e))}</span>"
            return None
        self.result.value = _pre(self.last.text())
        return self.last
