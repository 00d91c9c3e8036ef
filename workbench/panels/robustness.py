"""The Robustness panel: how the variants hold up under common corruptions.

For each chosen variant, the error under every corruption × severity on the same corrupted
images (:func:`~workbench.analysis.robustness.corruption_errors`, seeded), shown as the
evaluation table (errors with mCE and relative mCE against a reference, Hendrycks & Dietterich
2019) and as error-vs-severity curves; optionally the layer × corruption sensitivity of the
reference (one layer compressed at a time). The flips table lists the samples the corruptions
flip (right when clean, wrong when corrupted); selecting one shows it in the sample view and in
the gallery of its corrupted versions.

Examples
--------
>>> import workbench
>>> session = workbench.Session.default(progress=False)
>>> _ = session.prune("magnitude", sparsity=0.8)
>>> panel = RobustnessPanel.from_session(session, samples=40, corruptions=["rotate", "fog"],
...                                      severities=[1, 5])
>>> panel.variants = ["base", "magnitude-80"]
>>> sorted(k for k in panel.run_now() if k[0] == "errors")
[('errors', 'base'), ('errors', 'magnitude-80')]
>>> fig = panel.table_figure()
>>> bool((fig.data[0].z[1] == panel.results[("errors", "magnitude-80")].mean_error).all())
True
"""

from __future__ import annotations

import pandas as pd
import panel as pn
import param

from workbench.analysis.robustness import (GALLERY_MAX, SEVERITIES, TRANSFORMS, corruption_errors,
                                           gallery, layer_sensitivity)
from workbench.corruptions import corruption_names
from workbench.errors import ParameterError
from workbench.panels.analysis_base import Job
from workbench.panels.samples import SampleAnalysisPanel
from workbench.plots.robustness import (evaluation_table_figure, flips_table, gallery_figure,
                                        sensitivity_figure, severity_curves_figure)
from workbench.session import BASE

MEAN = "mean"
#: Largest number of corrupted images (samples × corruptions × severities) per variant.
MAX_IMAGES = 2_000_000


class RobustnessPanel(SampleAnalysisPanel):
    """Errors under corruptions, mCE, severity curves, flipped samples and layer sensitivity."""

    title = "Robustness"
    intro = ("Choose variants, corruptions and severities, then press **Run**. Every variant "
             "sees the same corrupted images; the default (all corruptions, 5 severities, 200 "
             "samples) takes a few seconds per variant on small images.")
    publishes = {"errors": "corruption"}

    corruptions = param.ListSelector(default=[], objects=[], label="Corruptions")
    severities = param.ListSelector(default=list(SEVERITIES), objects=list(SEVERITIES),
                                    label="Severities")
    seed = param.Integer(default=0, bounds=(0, None), doc="Corruption seed.")
    reference = param.Selector(default=BASE, objects=[BASE], label="Reference (mCE baseline)",
                               doc="mCE = 1 means as robust as this variant.")
    show_severity = param.Selector(default=MEAN, objects=[MEAN, *SEVERITIES],
                                   label="Table shows severity")
    sensitivity = param.Boolean(default=False, label="Layer × corruption sensitivity",
                                doc="Compress one layer of the reference at a time.")
    transform = param.Selector(default="magnitude", objects=list(TRANSFORMS),
                               label="Compress each layer by")
    sens_severity = param.Selector(default=3, objects=list(SEVERITIES), label="At severity")
    sparsity = param.Number(default=0.5, bounds=(0.0, 0.99), step=0.05,
                            label="Layer sparsity (magnitude)")
    bits = param.Selector(default=4, objects=[2, 3, 4, 8], label="Layer bits (uniform)")

    def __init__(self, **params):
        super().__init__(**params)
        x = self.state.session.data.x_test
        kind = "gray" if x.shape[1] == 1 else "rgb"
        names = corruption_names(kind) if x.ndim == 4 and x.shape[1] in (1, 3) else []
        self.param.corruptions.objects = names
        given = "corruptions" in params
        self.corruptions = [c for c in self.corruptions if c in names] if given else list(names)
        self._galleries: dict = {}

    def variants_changed(self, names):
        ref = self.reference if self.reference in names else (names[0] if names else BASE)
        self.param.reference.objects = names or [BASE]
        self.reference = ref

    # --- plan -------------------------------------------------------------------------------
    def plan(self) -> list[Job]:
        if not self.param.corruptions.objects:
            raise ParameterError("corruptions need image data shaped (C, H, W) with 1 or 3 "
                                 "channels; this session's inputs do not qualify")
        if not self.corruptions:
            raise ParameterError("choose at least one corruption")
        if not self.severities:
            raise ParameterError("choose at least one severity")
        idx, x, y = self.sample_data()
        names = tuple(c for c in self.param.corruptions.objects if c in self.corruptions)
        sev = tuple(sorted(int(s) for s in self.severities))
        if len(idx) * len(names) * len(sev) > MAX_IMAGES:
            raise ParameterError(f"{len(idx)} samples × {len(names)} corruptions × {len(sev)} "
                                 f"severities is more than the {MAX_IMAGES:,} corrupted images "
                                 "this panel makes per variant; lower the samples")
        seed = int(self.seed)
        jobs = [self.indices_job(idx)]
        for name in self.variants:
            v = self.state.variant(name)
            jobs.append(Job(("errors", name),
                            ("errors", self.variant_key(name), tuple(idx.tolist()), names, sev,
                             seed),
                            f"corrupting for {name}",
                            lambda done, v=v: corruption_errors(v, x, y, names, sev, seed,
                                                                progress=False)))
        if self.sensitivity:
            ref = self.reference
            transform, severity = self.transform, int(self.sens_severity)
            sparsity, bits = float(self.sparsity), int(self.bits)
            jobs.append(Job(("sensitivity", ref),
                            ("sensitivity", self.variant_key(ref), tuple(idx.tolist()), names,
                             severity, seed, transform, sparsity, bits),
                            f"layer sensitivity of {ref}",
                            lambda done, v=self.state.variant(ref): layer_sensitivity(
                                v, (x, y), transform, names, severity, sparsity=sparsity,
                                bits=bits, seed=seed, progress=False)))
        return jobs

    # --- results ------------------------------------------------------------------------------
    def errors(self) -> dict:
        """Variant name → CorruptionResult of the last run (variant order)."""
        res = {k[1]: r for k, r in self.results.items() if k[0] == "errors"}
        return {n: res[n] for n in self.state.variants if n in res}

    def baseline(self) -> str | None:
        errors = self.errors()
        if self.reference in errors:
            return self.reference
        return next(iter(errors), None)

    # --- figures (derivations) -----------------------------------------------------------------
    @param.depends("results", "reference", "show_severity")
    def table_figure(self):
        errors = self.errors()
        if not errors:
            return None
        sev = None if self.show_severity == MEAN else int(self.show_severity)
        if sev is not None and sev not in next(iter(errors.values())).severities:
            sev = None
        return evaluation_table_figure(errors, self.baseline(), severity=sev)

    @param.depends("results")
    def curves_figure(self):
        errors = self.errors()
        return severity_curves_figure(errors) if errors else None

    @param.depends("results")
    def sensitivity_figure(self):
        res = [r for k, r in self.results.items() if k[0] == "sensitivity"]
        return sensitivity_figure(res[0]) if res else None

    @param.depends("results", "reference")
    def flips_frame(self) -> pd.DataFrame:
        """The flipped samples of the last run (:func:`~workbench.plots.robustness.flips_table`)."""
        errors = self.errors()
        if not errors:
            return pd.DataFrame({"sample": [], "label": []})
        return flips_table(errors, self.indices, reference=self.baseline())

    def gallery_position(self) -> tuple[int, bool]:
        """``(position in the run's samples, whether it is the selected sample)``."""
        idx = self.indices
        sel = self.selection.index
        if idx is not None and sel is not None:
            hit = [i for i, v in enumerate(idx.tolist()) if v == sel]
            if hit:
                return hit[0], True
        return 0, False

    @param.depends("results", "selection.index")
    def gallery_figure(self):
        """The selected sample (or the first) under every corruption and severity, as the
        variants saw it; hover shows each variant's prediction."""
        errors = self.errors()
        if not errors:
            return None
        first = next(iter(errors.values()))
        pos, chosen = self.gallery_position()
        if pos >= GALLERY_MAX:
            return None
        idx = self.indices
        key = (id(first), first.corruptions, first.severities, first.seed, pos)
        g = self._galleries.get(key)
        if g is None:
            x = self.state.session.data.x_test[idx[:pos + 1]]
            g = gallery(x, first.corruptions, first.severities, seed=first.seed)
            self._galleries = {key: g, **dict(list(self._galleries.items())[:15])}
        preds = {n: (int(r.clean_predictions[pos]), r.predictions[:, :, pos])
                 for n, r in errors.items()}
        label = int(first.labels[pos])
        what = f"sample {int(idx[pos])}" + ("" if chosen else " (select a sample to change)")
        return gallery_figure(g, pos, predictions=preds, label=label,
                              title=f"Corrupted versions of {what}, class {label}")

    @param.depends("results")
    def notes(self) -> str:
        errors = self.errors()
        base = self.baseline()
        if not errors or base is None:
            return ""
        from workbench.analysis.robustness import mce

        lines = []
        for n, r in errors.items():
            m = mce(r, errors[base])
            lines.append(f"- **{n}**: clean error {100 * r.clean_error:.1f}%, mean corruption "
                         f"error {100 * float(r.mean_error.mean()):.1f}%, mCE "
                         f"{100 * m['mce']:.0f}%, relative mCE {100 * m['relative_mce']:.0f}% "
                         f"(vs {base})")
            lines += [f"  - {note}" for note in m["notes"][:3]]
        return "\n".join(lines)

    # --- view -----------------------------------------------------------------------------------
    @param.depends("sensitivity")
    def _uses_sensitivity(self) -> bool:
        return self.sensitivity

    def controls(self) -> list:
        w = pn.widgets
        return [
            w.MultiChoice.from_param(self.param.corruptions, sizing_mode="stretch_width"),
            w.CheckButtonGroup.from_param(self.param.severities, color="primary",
                                          variant="outline"),
            w.IntInput.from_param(self.param.samples),
            w.IntInput.from_param(self.param.seed),
            w.Select.from_param(self.param.reference),
            w.Checkbox.from_param(self.param.sensitivity),
            w.Select.from_param(self.param.transform, visible=self._uses_sensitivity),
            w.Select.from_param(self.param.sens_severity, visible=self._uses_sensitivity),
            w.FloatSlider.from_param(self.param.sparsity, visible=self._uses_sensitivity),
            w.Select.from_param(self.param.bits, visible=self._uses_sensitivity),
        ]

    def _on_row(self, table, event) -> None:
        rows = event.new or []
        frame = table.value
        if rows and frame is not None and 0 <= rows[0] < len(frame):
            self.select_sample(int(frame.iloc[rows[0]]["sample"]))

    @param.depends("results")
    def outputs(self):
        if not self.errors():
            return self.outputs_with_samples()
        table = pn.widgets.Tabulator(self.flips_frame, disabled=True, show_index=False,
                                     selectable=1, height=320, layout="fit_data_table",
                                     sizing_mode="stretch_width", css_classes=["wb-flips"])
        table.param.watch(lambda e: self._on_row(table, e), "selection")
        items = [
            pn.Row(pn.widgets.RadioButtonGroup.from_param(self.param.show_severity,
                                                          color="primary",
                                                          variant="outline")),
            self.exportable(self.table_figure),
            pn.pane.Markdown(self.notes),
            self.exportable(self.curves_figure),
            pn.Row(pn.Column(pn.pane.Markdown("#### Samples the corruptions flip (select one)"),
                             table, width=460),
                   self.exportable(self.gallery_figure), sizing_mode="stretch_width"),
        ]
        if any(k[0] == "sensitivity" for k in self.results):
            items.append(self.exportable(self.sensitivity_figure))
        return self.outputs_with_samples(*items)


__all__ = ["RobustnessPanel"]
