"""The Relevance panel: what each variant looks at, and whether compression preserves it.

For each chosen variant, relevance maps of the same few test samples
(:data:`~workbench.relevance.ATTRIBUTIONS`: LRP with a composite by default, or saliency,
integrated gradients, occlusion), explaining the true class (so every variant explains the same
output) or each variant's own prediction. Shown as a samples × variants heatmap grid, the linked
SampleGrid widget (images with the relevance overlaid, predictions and margins), and the
preservation scores of each variant against a reference: Spearman rank correlation and top-k
overlap of the maps (:func:`~workbench.relevance.relevance_preservation`).

Examples
--------
>>> import workbench
>>> session = workbench.Session.default(progress=False)
>>> _ = session.prune("magnitude", sparsity=0.7)
>>> panel = RelevancePanel.from_session(session, samples=4)
>>> panel.variants = ["base", "magnitude-70"]
>>> sorted(k for k in panel.run_now() if k[0] == "preservation")
[('preservation', 'magnitude-70', 'base')]
>>> p = panel.preservations()["magnitude-70"]
>>> list(panel.preservation_figure().data[0].y) == [p.mean_spearman]
True
"""

from __future__ import annotations

import numpy as np
import panel as pn
import param

from workbench.panels.analysis_base import Job
from workbench.panels.samples import SampleAnalysisPanel
from workbench.plots.relevance import channel_sum, preservation_figure, relevance_grid_figure
from workbench.relevance import ATTRIBUTIONS, COMPOSITES, relevance_preservation
from workbench.session import BASE

TARGETS = ("true class", "predicted class")
MAX_SAMPLES = 64


class RelevancePanel(SampleAnalysisPanel):
    """Relevance maps of a few samples in several variants, and how well they are preserved."""

    title = "Relevance"
    intro = ("Choose variants and press **Run**: LRP maps of 8 test samples take well under a "
             "second per variant on a small CNN. Click a sample (grid or widget) to select it "
             "in every view.")
    publishes = {"relevance": "relevance"}

    samples = param.Integer(default=8, bounds=(1, MAX_SAMPLES), label="Samples",
                            doc="Test samples explained (the first of the shared "
                                "class-stratified order).")
    method = param.Selector(default="lrp", objects=["lrp"], label="Method")
    composite = param.Selector(default="epsilon_plus", objects=["epsilon_plus"],
                               label="LRP composite")
    target = param.Selector(default=TARGETS[0], objects=list(TARGETS), label="Explain")
    reference = param.Selector(default=BASE, objects=[BASE], label="Reference")
    k = param.Number(default=0.1, bounds=(0.0, None), inclusive_bounds=(False, True),
                     softbounds=(0.01, 0.5), step=0.01, label="Top-k (fraction of pixels)")
    absolute = param.Boolean(default=False, label="Rank by |relevance|")

    def __init__(self, **params):
        super().__init__(**params)
        self.param.method.objects = ATTRIBUTIONS.names()
        self.param.composite.objects = COMPOSITES.names()
        self._grid = None

    def variants_changed(self, names):
        ref = self.reference if self.reference in names else (names[0] if names else BASE)
        self.param.reference.objects = names or [BASE]
        self.reference = ref

    # --- plan -------------------------------------------------------------------------------
    def plan(self) -> list[Job]:
        idx, x, y = self.sample_data()
        key_idx = tuple(idx.tolist())
        method = self.method
        params = {"composite": self.composite} if method == "lrp" else {}
        target = y if self.target == TARGETS[0] else None
        names = list(self.variants)
        jobs = [self.indices_job(idx)]
        settings = (key_idx, method, tuple(sorted(params.items())), self.target)
        for name in names:
            v = self.state.variant(name)
            jobs.append(Job(("relevance", name), ("relevance", self.variant_key(name), *settings),
                            f"{method} of {name}",
                            lambda done, v=v: ATTRIBUTIONS[method](v.model, x, target=target,
                                                                   **params)))
        ref, k, absolute = self.reference, float(self.k), bool(self.absolute)
        if k >= 1:
            k = int(k)
        if ref in names:
            for name in names:
                if name == ref:
                    continue
                jobs.append(Job(("preservation", name, ref),
                                ("preservation", self.variant_key(ref), self.variant_key(name),
                                 *settings, k, absolute),
                                f"preservation {ref} → {name}",
                                lambda done, n=name: relevance_preservation(
                                    done[("relevance", ref)], done[("relevance", n)], k=k,
                                    absolute=absolute),
                                needs=(("relevance", ref), ("relevance", name))))
        if x.ndim == 4:
            jobs.append(Job(("grid",), ("grid", tuple(self.variant_key(n) for n in names),
                                        *settings),
                            "sample grid", lambda done: self._grid_data(done, names, idx),
                            needs=tuple(("relevance", n) for n in names)))
        return jobs

    def _grid_data(self, done, names, idx) -> dict:
        """The SampleGrid fields: images, relevance overlays, and as margins the geometric
        margins of the Geometry view (distance to the true class's nearest boundary; the
        widget's top-2 logit margin if the model has no final linear layer)."""
        from workbench.analysis.geometry import feature_geometry
        from workbench.errors import WorkbenchError
        from workbench.widgets.buffers import to_bytes
        from workbench.widgets.sample_grid import sample_grid_data

        heat = np.stack([channel_sum(done[("relevance", n)]) for n in names]).astype(np.float32)
        data = sample_grid_data(self.state.session, names, indices=idx.tolist(), heatmaps=heat)
        x, y = self.state.session.data.x_test[idx], self.state.session.data.y_test[idx]
        try:
            geos = [feature_geometry(self.state.variant(n), x, y) for n in names]
        except WorkbenchError:
            return data
        data["predictions"] = to_bytes(np.stack([g.predictions for g in geos]))
        data["margins"] = to_bytes(np.stack([g.margin for g in geos]))
        return data

    # --- results ------------------------------------------------------------------------------
    def attributions(self) -> dict:
        """Variant name → Attribution of the last run (variant order)."""
        res = {k[1]: r for k, r in self.results.items() if k[0] == "relevance"}
        return {n: res[n] for n in self.state.variants if n in res}

    def preservations(self) -> dict:
        """Variant name → Preservation against the reference of the last run."""
        res = {k[1]: r for k, r in self.results.items() if k[0] == "preservation"}
        return {n: res[n] for n in self.state.variants if n in res}

    def preserved_against(self) -> str | None:
        """The reference of the last run's preservation scores."""
        return next((k[2] for k in self.results if k[0] == "preservation"), None)

    # --- figures (derivations) -----------------------------------------------------------------
    @param.depends("results", "selection.index")
    def grid_figure(self):
        attrs = self.attributions()
        if not attrs or next(iter(attrs.values())).maps.ndim != 4:  # images only
            return None
        idx = self.indices
        data = self.state.session.data
        import torch

        t = torch.as_tensor(idx)
        preds = None
        grid = self.results.get(("grid",))
        if grid is not None:
            from workbench.widgets.buffers import from_bytes

            p = from_bytes(grid["predictions"]).reshape(len(grid["variants"]), -1)
            preds = {n: p[i] for i, n in enumerate(grid["variants"])}
        return relevance_grid_figure(attrs, indices=idx, images=data.x_test[t],
                                     labels=data.y_test[t].tolist(), predictions=preds,
                                     selected=self.selection.index,
                                     title=f"{self.method} relevance of the {self.target}")

    @param.depends("results")
    def preservation_figure(self):
        pres = self.preservations()
        if not pres:
            return None
        return preservation_figure(pres, reference=self.preserved_against())

    @param.depends("results")
    def notes(self) -> str:
        lines = []
        for n, p in self.preservations().items():
            off = int((~np.asarray(p.targets_match)).sum())
            if off:
                lines.append(f"- **{n}** explains another class than the reference for {off} "
                             "sample(s) (its prediction differs); compare with *Explain: true "
                             "class*.")
        return "\n".join(lines)

    # --- the sample grid widget (linked both ways) -------------------------------------------
    def sample_grid(self):
        """A :class:`~workbench.widgets.panel.SampleGridPanel` of the last run, or ``None``."""
        data = self.results.get(("grid",))
        if data is None:
            return None
        from workbench.widgets.panel import SampleGridPanel

        grid = SampleGridPanel(**{**data, "selected": self._grid_position()})
        grid.param.watch(self._grid_selected, "selected")
        self._grid = grid
        return grid

    def _grid_position(self) -> int:
        idx, sel = self.indices, self.selection.index
        if idx is None or sel is None:
            return -1
        hit = np.flatnonzero(np.asarray(idx) == sel)
        return int(hit[0]) if len(hit) else -1

    def _grid_selected(self, event) -> None:
        grid = event.obj
        index = grid.selected_index
        if index is not None and index != self.selection.index:
            self.select_sample(index)

    @param.depends("selection.index", watch=True)
    def _selection_to_grid(self):
        grid = getattr(self, "_grid", None)  # (also called while the panel is made)
        if grid is not None:
            grid.selected = self._grid_position()

    # --- view -----------------------------------------------------------------------------------
    @param.depends("method")
    def _is_lrp(self) -> bool:
        return self.method == "lrp"

    def controls(self) -> list:
        w = pn.widgets
        return [
            w.IntInput.from_param(self.param.samples),
            w.Select.from_param(self.param.method),
            w.Select.from_param(self.param.composite, visible=self._is_lrp),
            w.RadioButtonGroup.from_param(self.param.target, color="primary",
                                          variant="outline"),
            w.Select.from_param(self.param.reference),
            w.FloatInput.from_param(self.param.k),
            w.Checkbox.from_param(self.param.absolute),
        ]

    @param.depends("results")
    def outputs(self):
        if not self.attributions():
            return self.outputs_with_samples()
        n = len(self.attributions())
        items = [self.exportable(self.grid_figure, height=110 + 90 * (n + 1))]
        grid = self.sample_grid()
        if grid is not None:
            items.append(pn.Column(pn.pane.Markdown("#### Samples × variants (click a column)"),
                                   grid, sizing_mode="stretch_width"))
        if self.preservations():
            items += [self.exportable(self.preservation_figure), pn.pane.Markdown(self.notes)]
        return self.outputs_with_samples(*items)


__all__ = ["RelevancePanel", "TARGETS"]
