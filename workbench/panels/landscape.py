"""The Landscape panel: loss surfaces, lines and interpolations of the session's variants.

Three analyses (Li et al. 2018, "Visualizing the Loss Landscape of Neural Nets"):

* **plane**: the loss on a plane of two random filter-normalised directions through each
  variant, as contours or a 3-D surface. With *masked directions* the directions are zero at
  pruned weights, so the plane stays inside the pruned network's subspace.
  With *variants on the dense landscape* the plane instead goes through the dense model and the
  variants: its first direction is the step from the dense model to the first variant, the second
  the step to the second variant (or a random direction of the same length), so the variants
  appear as marked points of the dense model's landscape (a random plane would miss them: they
  lie almost entirely off it).
* **line**: the loss along one random direction through each variant, overlaid.
* **interpolation**: the loss on the straight line from the dense model to each variant.

Examples
--------
>>> import workbench
>>> session = workbench.Session.default(progress=False)
>>> _ = session.prune("magnitude", sparsity=0.5)
>>> panel = LandscapePanel.from_session(session, steps=5, samples=64)
>>> panel.variants = ["base", "magnitude-50"]
>>> sorted(panel.run_now())
[('plane', 'base'), ('plane', 'magnitude-50')]
>>> fig = panel.figures()["magnitude-50"]
>>> bool((fig.data[0].z == panel.results[("plane", "magnitude-50")].loss).all())
True
"""

from __future__ import annotations

import math
from typing import Sequence

import panel as pn
import param
import torch

from workbench.analysis import interpolate, landscape_1d, landscape_2d, project_onto
from workbench.analysis.directions import random_directions, unwrap
from workbench.errors import ParameterError
from workbench.panels.analysis_base import AnalysisPanel, Job
from workbench.panels.export import plotly_pane
from workbench.plots.landscape import contour_figure, curves_figure, surface_figure
from workbench.session import BASE

KINDS = ("plane", "line", "interpolation")
#: Largest number of (grid point, sample) evaluations one job may ask for.
MAX_EVALUATIONS = 2_000_000


def plane_through(reference, others: Sequence, seed: int = 0) -> tuple[dict, dict]:
    """Two directions of a plane through ``reference`` and the first one or two of ``others``.

    The first direction is ``θ_others[0] − θ_reference`` (so that model sits at ``(1, 0)``); the
    second is the step to ``others[1]`` made orthogonal to the first (that model sits at
    ``(a, 1)``), or, with a single other model, a seeded filter-normalised random direction made
    orthogonal to the first and rescaled to its length.

    Parameters
    ----------
    reference : nn.Module or Variant
        The centre of the plane (e.g. the dense model).
    others : sequence of nn.Module or Variant
        One or two models with the reference's parameter names and shapes.
    seed : int
        Seed of the random second direction.

    Returns
    -------
    tuple of two dicts
        Parameter name → tensor, for ``landscape_2d(..., directions=...)``.

    Examples
    --------
    >>> import torch
    >>> from workbench.analysis import project_onto
    >>> _ = torch.manual_seed(0)
    >>> a, b = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    >>> dirs = plane_through(a, [b])
    >>> p = project_onto(a, b, dirs)
    >>> round(p.alpha, 6), abs(round(p.beta, 6)), round(p.residual_norm, 6)
    (1.0, 0.0, 0.0)
    """
    if not 1 <= len(others) <= 2:
        raise ParameterError(f"a plane goes through one or two other models, got {len(others)}")
    ref, _ = unwrap(reference)
    pa = {n: p.detach() for n, p in ref.named_parameters()}

    def offset(model):
        module, _ = unwrap(model)
        pb = {n: p.detach() for n, p in module.named_parameters()}
        if pb.keys() != pa.keys() or any(pb[n].shape != pa[n].shape for n in pa):
            raise ParameterError("the models differ in parameter names or shapes (a physically "
                                 "slimmed model cannot be placed on the dense landscape)")
        return {n: (pb[n] - pa[n]).double() for n in pa}

    def dot(u, v):
        return sum(float((u[n] * v[n]).sum()) for n in u)

    d1 = offset(others[0])
    n1 = dot(d1, d1)
    if n1 == 0:
        raise ParameterError("the model is identical to the reference: no direction to it")
    d2 = offset(others[1]) if len(others) == 2 else None
    if d2 is not None:
        c = dot(d2, d1) / n1
        d2 = {n: d2[n] - c * d1[n] for n in d1}
        if dot(d2, d2) <= 1e-12 * n1:  # on the line through the first: use a random direction
            d2 = None
    if d2 is None:
        (r,) = random_directions(ref, seed, count=1, masks={})
        r = {n: r[n].double() if n in r else torch.zeros_like(d1[n]) for n in d1}
        c = dot(r, d1) / n1
        r = {n: r[n] - c * d1[n] for n in d1}
        scale = math.sqrt(n1 / max(dot(r, r), 1e-300))
        d2 = {n: t * scale for n, t in r.items()}
    dtype = {n: p.dtype for n, p in pa.items()}
    return ({n: t.to(dtype[n]) for n, t in d1.items()}, {n: t.to(dtype[n]) for n, t in d2.items()})


class LandscapePanel(AnalysisPanel):
    """Loss landscapes (plane, line, interpolation) of one or several variants."""

    title = "Loss landscape"
    intro = ("Choose variants and an analysis, then press **Run**. The default 11×11 plane on "
             "128 test samples takes a few seconds per variant.")

    kind = param.Selector(default="plane", objects=list(KINDS), label="Analysis")
    steps = param.Integer(default=11, bounds=(2, 501), softbounds=(3, 51),
                          doc="Grid points per axis.")
    span = param.Number(default=1.0, bounds=(0.01, 100.0), softbounds=(0.1, 3.0), step=0.05,
                        doc="Axes run from -span to span (in units of the direction); on "
                            "the dense landscape from -span/2 to 1 + span/2.")
    seed = param.Integer(default=0, bounds=(0, None), doc="Seed of the random directions.")
    samples = param.Integer(default=128, bounds=(1, None),
                            doc="Test samples the loss is averaged over (class-stratified).")
    masked = param.Boolean(default=True, label="Masked directions",
                           doc="Directions are zero at pruned weights (pruned variants only).")
    on_dense = param.Boolean(default=False, label="Variants on the dense landscape",
                             doc="One plane through the dense model and the variants.")
    reference = param.Selector(default=BASE, objects=[BASE], label="Dense model",
                               doc="Centre of the dense landscape; start of interpolations.")
    extrapolate = param.Number(default=0.25, bounds=(0.0, 2.0), step=0.05,
                               doc="Extend interpolations beyond both ends by this much.")
    metric = param.Selector(default="loss", objects=["loss", "accuracy"], label="Show")
    surface = param.Boolean(default=False, label="3-D surface")

    _skipped: list = []

    def variants_changed(self, names):
        ref = self.reference if self.reference in names else (names[0] if names else BASE)
        self.param.reference.objects = names or [BASE]
        self.reference = ref

    # --- plan -------------------------------------------------------------------------------
    def _check_budget(self, points: int, n: int) -> None:
        if points * n > MAX_EVALUATIONS:
            raise ParameterError(
                f"{points:,} grid points × {n} samples = {points * n:,} evaluations per variant, "
                f"more than the {MAX_EVALUATIONS:,} this panel allows; lower steps or samples "
                "(or call workbench.analysis directly)")

    def plan(self) -> list[Job]:
        self._skipped = []
        names = list(self.variants)
        n = min(self.samples, len(self.state.variant(self.reference).data.y_test))
        steps, span, seed = int(self.steps), float(self.span), int(self.seed)
        if self.kind == "plane":
            self._check_budget(steps * steps, n)
            return self._plan_dense(names, n) if self.on_dense else [
                self._plane_job(name, n) for name in names]
        if self.kind == "line":
            self._check_budget(steps, n)
            jobs = []
            for name in names:
                v = self.state.variant(name)
                masks = None if self.masked else {}
                x, y = self.test_subset(name, n)
                jobs.append(Job(("line", name),
                                ("line", self.variant_key(name), n, steps, span, seed,
                                 bool(self.masked and v.masks)),
                                f"line through {name}",
                                lambda done, v=v, x=x, y=y, masks=masks: landscape_1d(
                                    v, x, y, steps=steps, span=span, seed=seed, masks=masks,
                                    progress=False)))
            return jobs
        # interpolation
        if names and all(name == self.reference for name in names):
            raise ParameterError(f"an interpolation goes from the dense model "
                                 f"({self.reference}) to another variant: select one")
        self._check_budget(max(steps, 2) + 2 * math.ceil(self.extrapolate * (steps - 1)), n)
        ref = self.state.variant(self.reference)
        x, y = self.test_subset(self.reference, n)
        extra = float(self.extrapolate)
        return [Job(("interpolation", name),
                    ("interpolation", self.variant_key(self.reference), self.variant_key(name),
                     n, max(steps, 2), extra),
                    f"{self.reference} → {name}",
                    lambda done, v=self.state.variant(name): interpolate(
                        ref, v, x, y, steps=max(steps, 2), extrapolate=extra, progress=False))
                for name in names if name != self.reference]

    def _plane_job(self, name: str, n: int) -> Job:
        v = self.state.variant(name)
        x, y = self.test_subset(name, n)
        masks = None if self.masked else {}
        steps, span, seed = int(self.steps), float(self.span), int(self.seed)
        return Job(("plane", name),
                   ("plane", self.variant_key(name), n, steps, span, seed,
                    bool(self.masked and v.masks)),
                   f"plane through {name}",
                   lambda done: landscape_2d(v, x, y, steps=steps, span=span, seed=seed,
                                             masks=masks, progress=False))

    def _plan_dense(self, names: list[str], n: int) -> list[Job]:
        ref_name = self.reference
        ref = self.state.variant(ref_name)
        others = [m for m in names if m != ref_name]
        if not others:
            return [self._plane_job(ref_name, n)]
        pa = {k: p.shape for k, p in ref.model.named_parameters()}

        def same_shape(m):
            pb = {k: p.shape for k, p in self.state.variant(m).model.named_parameters()}
            return pb == pa

        through = [m for m in others if same_shape(m)][:2]
        if not through:
            raise ParameterError(f"none of {others} has the parameter shapes of {ref_name!r} "
                                 "(physically slimmed models cannot be placed on the dense "
                                 "landscape); choose an unstructured or quantized variant")
        x, y = self.test_subset(ref_name, n)
        steps, span, seed = int(self.steps), float(self.span), int(self.seed)
        axis = (-span / 2, 1 + span / 2)
        key = ("dense-plane", self.variant_key(ref_name),
               tuple(self.variant_key(m) for m in through), n, steps, span, seed)

        def plane(done):
            dirs = plane_through(ref, [self.state.variant(m) for m in through], seed)
            ls = landscape_2d(ref, x, y, steps=steps, span=axis, masks={}, directions=dirs,
                              progress=False)
            ls.meta.update(kind="through variants", through=list(through))
            return ls

        jobs = [Job(("dense", ref_name), key, f"plane through {ref_name} and "
                    f"{' and '.join(through)}", plane)]
        self._skipped = [m for m in others if not same_shape(m)]
        for m in others:
            if m in self._skipped:
                continue
            jobs.append(Job(("point", m), ("point", key, self.variant_key(m)),
                            f"placing {m}",
                            lambda done, v=self.state.variant(m): project_onto(
                                ref, v, done[("dense", ref_name)].directions),
                            needs=(("dense", ref_name),)))
        return jobs

    # --- figures (derivations) ----------------------------------------------------------------
    @param.depends("results", "metric", "surface")
    def figures(self) -> dict:
        """Title → plotly figure of the current results."""
        res, metric = self.results, self.metric
        figs = {}
        planes = {k[1]: r for k, r in res.items() if k[0] == "plane"}
        for name, ls in planes.items():
            title = f"{name}: {metric}" + (" (masked directions)" if ls.meta.get("masked") else "")
            figs[name] = (surface_figure(ls, metric=metric, title=title) if self.surface
                          else contour_figure(ls, metric=metric, title=title))
        for (kind, ref), ls in [(k, r) for k, r in res.items() if k[0] == "dense"]:
            points = {k[1]: p for k, p in res.items() if k[0] == "point"}
            title = f"{ref}: {metric} on the plane through " + " and ".join(ls.meta["through"])
            figs[f"{ref} (dense)"] = (surface_figure(ls, metric=metric, title=title)
                                      if self.surface else
                                      contour_figure(ls, metric=metric, points=points,
                                                     title=title))
        lines = {k[1]: r for k, r in res.items() if k[0] == "line"}
        if lines:
            figs["lines"] = curves_figure(lines, metric=metric,
                                          title=f"Along a random direction: {metric}")
        interps = {f"{self.reference} → {k[1]}": r for k, r in res.items()
                   if k[0] == "interpolation"}
        if interps:
            figs["interpolation"] = curves_figure(interps, metric=metric)
        return figs

    @param.depends("results")
    def notes(self) -> str:
        """Where the variants lie relative to the dense plane (markdown)."""
        lines = []
        for k, p in self.results.items():
            if k[0] == "point":
                off = 0.0 if p.offset_norm == 0 else p.residual_norm / p.offset_norm
                lines.append(f"- **{k[1]}** at α = {round(p.alpha, 3) + 0.0:.3f}, "
                             f"β = {round(p.beta, 3) + 0.0:.3f}"
                             + (f"; {100 * off:.0f}% of its distance lies off the plane "
                                "(the contour value there is only indicative)"
                                if off > 0.01 else " (on the plane)"))
        if any(k[0] == "dense" for k in self.results):
            lines += [f"- **{m}** is physically slimmed: its weights have other shapes, so it "
                      "has no place on the dense landscape" for m in self._skipped]
        return "\n".join(lines)

    # --- view -----------------------------------------------------------------------------------
    @param.depends("kind")
    def _is_plane(self) -> bool:
        return self.kind == "plane"

    @param.depends("kind")
    def _is_interpolation(self) -> bool:
        return self.kind == "interpolation"

    @param.depends("kind")
    def _uses_directions(self) -> bool:
        return self.kind != "interpolation"

    @param.depends("kind", "on_dense")
    def _uses_reference(self) -> bool:
        return self.kind == "interpolation" or (self.kind == "plane" and self.on_dense)

    def controls(self) -> list:
        w = pn.widgets
        return [
            w.RadioButtonGroup.from_param(self.param.kind, color="primary", variant="outline"),
            w.IntSlider.from_param(self.param.steps),
            w.FloatSlider.from_param(self.param.span, visible=self._uses_directions),
            w.IntInput.from_param(self.param.samples),
            w.IntInput.from_param(self.param.seed, visible=self._uses_directions),
            w.Checkbox.from_param(self.param.masked, visible=self._uses_directions),
            w.Checkbox.from_param(self.param.on_dense, visible=self._is_plane),
            w.Select.from_param(self.param.reference, visible=self._uses_reference),
            w.FloatSlider.from_param(self.param.extrapolate, visible=self._is_interpolation),
            pn.Row(w.RadioButtonGroup.from_param(self.param.metric, color="primary",
                                                 variant="outline"),
                   w.Checkbox.from_param(self.param.surface, visible=self._is_plane)),
        ]

    @param.depends("results", "metric", "surface")
    def outputs(self):
        figs = self.figures()
        panes = [plotly_pane(f, f"landscape-{key}", sizing_mode="stretch_width",
                             height=f.layout.height or 420)
                 for key, f in figs.items()]
        grid = pn.GridBox(*panes, ncols=2 if len(panes) > 1 else 1,
                          sizing_mode="stretch_width")
        return pn.Column(grid, pn.pane.Markdown(self.notes()), sizing_mode="stretch_width")


__all__ = ["LandscapePanel", "plane_through", "KINDS", "MAX_EVALUATIONS"]
