"""The Subspace panel: active subspaces of the layers, the universal attack, and ASNet.

Following Cui, Zhang et al. (SIMODS 2020, "Active Subspace of Neural Networks: Structural Analysis
and Universal Attacks"):

* **eigenvalue decay**: the spectrum of the gradient covariance ``E[g gᵀ]`` at every layer's
  neurons, for each chosen variant; few large eigenvalues mean few *active neurons*. Next to it,
  the active-neuron count of every layer of the dense model against the channels each
  structured-pruned variant of the session kept.
* **universal attack**: one input perturbation along the top active direction of the input
  gradients, against random directions and the universal gradient sign, by perturbation norm.
* **ASNet**: the dense model cut at a layer, projected on ``r`` active directions, with a
  polynomial-chaos (or small MLP) head, compared with the original and with the pruned variants
  of similar size.

Examples
--------
>>> import workbench
>>> session = workbench.Session.default(progress=False)
>>> panel = SubspacePanel.from_session(session, analyses=["spectra"], samples=64)
>>> sorted(panel.run_now())
[('counts', 'base'), ('spectra', 'base')]
>>> fig = panel.figures()["decay"]
>>> len(fig.data) == len(panel.results[("spectra", "base")])
True
"""

from __future__ import annotations

import numpy as np
import panel as pn
import param
from torch import nn

from workbench.analysis import all_layers, asnet, attack_curve
from workbench.analysis.subspace import layer_names
from workbench.errors import ParameterError
from workbench.panels.analysis_base import AnalysisPanel, Job
from workbench.panels.export import plotly_pane
from workbench.plots.subspace import (active_counts_figure, asnet_figure, asnet_rows,
                                      attack_figure, decay_figure, perturbation_figure)
from workbench.prune.active import channel_counts
from workbench.session import BASE

ALL = "all layers"
ANALYSES = {"Eigenvalue decay & active neurons": "spectra", "Universal attack": "attack",
            "ASNet": "asnet"}
CUT_TYPES = (nn.ReLU, nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.Flatten, nn.Tanh,
             nn.GELU, nn.SiLU, nn.LeakyReLU)


def default_cut(model: nn.Module) -> str:
    """Where ASNet cuts by default: the last activation or pooling module before the first
    Linear layer (the paper cuts after a convolutional block), else the middle leaf module.

    Examples
    --------
    >>> from workbench.models import create_model
    >>> default_cut(create_model("lenet5", (1, 8, 8), 10))
    'features.5'
    """
    leaves = [(n, m) for n, m in model.named_modules() if n and not list(m.children())]
    cut = None
    for n, m in leaves:
        if isinstance(m, nn.Linear):
            break
        if isinstance(m, CUT_TYPES) and not isinstance(m, nn.Flatten):
            cut = n
    return cut or (leaves[len(leaves) // 2][0] if leaves else "")


def parse_norms(text: str) -> list[float]:
    """Perturbation norms from text such as ``"0, 0.5, 1, 2"``.

    Examples
    --------
    >>> parse_norms("0, 0.5 1;2")
    [0.0, 0.5, 1.0, 2.0]
    """
    parts = [p for p in str(text).replace(",", " ").replace(";", " ").split() if p]
    try:
        norms = [float(p) for p in parts]
    except ValueError:
        raise ParameterError(f"norms must be numbers separated by commas, got {text!r}") from None
    if not norms or any(not np.isfinite(v) or v < 0 for v in norms):
        raise ParameterError(f"norms must be one or more finite numbers >= 0, got {text!r}")
    return norms


class SubspacePanel(AnalysisPanel):
    """Active subspaces, active neurons, the universal attack and ASNet."""

    title = "Active subspace"
    intro = ("Choose variants and analyses, then press **Run** (a few seconds with the default "
             "settings). The active-neuron counts and ASNet use the *dense model*.")

    analyses = param.ListSelector(default=list(ANALYSES.values()), objects=ANALYSES,
                                  label="Analyses")
    layer = param.Selector(default=ALL, objects=[ALL], check_on_set=False, label="Layer",
                           doc="The layers whose spectra are shown (all Conv2d/Linear layers, "
                               "or any one module).")
    pool = param.Selector(default="channel", objects=["channel", "none"], label="Neurons",
                          doc="'channel': one neuron per channel; 'none': every output.")
    threshold = param.Number(default=0.95, bounds=(0.01, 1.0), step=0.01,
                             doc="Variance fraction that defines the active dimension.")
    samples = param.Integer(default=256, bounds=(2, None),
                            doc="Training samples for the spectra; test samples for the attack.")
    norms = param.String(default="0, 0.5, 1, 2, 3, 4", label="Attack norms (L2)")
    n_random = param.Integer(default=5, bounds=(1, 100), label="Random directions")
    reference = param.Selector(default=BASE, objects=[BASE], label="Dense model")
    cut = param.Selector(default=None, objects=[], allow_None=True, check_on_set=False,
                         label="ASNet cut after")
    r = param.Integer(default=0, bounds=(0, 200), label="ASNet r (0: active dimension)")
    head = param.Selector(default="pce", objects=["pce", "mlp"], label="ASNet head")
    epochs = param.Integer(default=10, bounds=(0, 500), label="Head epochs")
    seed = param.Integer(default=0, bounds=(0, None))

    def __init__(self, **params):
        super().__init__(**params)
        self._sync_layers()

    def variants_changed(self, names):
        ref = self.reference if self.reference in names else (names[0] if names else BASE)
        self.param.reference.objects = names or [BASE]
        self.reference = ref

    @param.depends("state.revision", watch=True)
    def _sync_layers(self):
        model = self.state.session.base.model
        layer, cut = self.layer, self.cut
        modules = [n for n, _ in model.named_modules() if n]
        self.param.layer.objects = [ALL, *layer_names(model)]
        self.layer = layer
        self.param.cut.objects = modules
        self.cut = cut if cut else default_cut(model)

    # --- plan -------------------------------------------------------------------------------
    def plan(self) -> list[Job]:
        unknown = set(self.analyses) - set(ANALYSES.values())
        if unknown:
            raise ParameterError(f"unknown analyses {sorted(unknown)}")
        seed, n, threshold = int(self.seed), int(self.samples), float(self.threshold)
        jobs: list[Job] = []
        if "spectra" in self.analyses:
            layers = None if self.layer == ALL else [self.layer]
            for name in self.variants:
                v = self.state.variant(name)
                jobs.append(self._spectra_job(("spectra", name), v, name, layers, self.pool,
                                              threshold, n, seed))
            ref = self.state.variant(self.reference)
            jobs.append(self._spectra_job(("counts", self.reference), ref, self.reference, None,
                                          "channel", threshold, n, seed))
        if "attack" in self.analyses:
            norms = parse_norms(self.norms)
            n_random = int(self.n_random)
            for name in self.variants:
                v = self.state.variant(name)
                x, y = self.test_subset(name, n)
                jobs.append(Job(
                    ("attack", name),
                    ("attack", self.variant_key(name), len(y), tuple(norms), n_random, seed),
                    f"universal attack on {name}",
                    lambda done, v=v, x=x, y=y: attack_curve(v, x, y, norms, seed=seed,
                                                             n_random=n_random)))
        if "asnet" in self.analyses:
            if not self.cut:
                raise ParameterError("choose the layer ASNet cuts after")
            ref = self.state.variant(self.reference)
            cut, r, head, epochs = self.cut, int(self.r) or None, self.head, int(self.epochs)
            jobs.append(Job(
                ("asnet", self.reference),
                ("asnet", self.variant_key(self.reference), cut, r, head, epochs, threshold, n,
                 seed),
                f"ASNet of {self.reference} cut after {cut}",
                lambda done: asnet(ref, layer=cut, r=r, head=head, threshold=threshold,
                                   epochs=epochs, n_samples=n, seed=seed)))
        return jobs

    def _spectra_job(self, job_name, v, name, layers, pool, threshold, n, seed) -> Job:
        layers_key = None if layers is None else tuple(layers)
        return Job(job_name,
                   ("spectra", self.variant_key(name), layers_key, pool, threshold, n, seed),
                   f"active subspaces of {name}" + (" (per channel)" if pool == "channel"
                                                    else ""),
                   lambda done: all_layers(v, layers=layers, pool=pool, threshold=threshold,
                                           n_samples=n, seed=seed))

    # --- figures (derivations) ----------------------------------------------------------------
    def channel_table(self) -> dict:
        """Model name → {layer → channels} for the dense model and every variant of the session
        whose channel counts differ from it (the structured-pruned ones)."""
        session = self.state.session
        if self.reference not in session.variants:
            return {}
        ref = channel_counts(session[self.reference].model)
        out = {self.reference: ref}
        for name, v in session.variants.items():
            counts = channel_counts(v.model)
            if name != self.reference and counts != ref and set(counts) == set(ref):
                out[name] = counts
        return out

    def asnet_table(self) -> list[dict]:
        """Rows of :func:`~workbench.plots.subspace.asnet_rows` for the last ASNet result."""
        res = [r for k, r in self.results.items() if k[0] == "asnet"]
        if not res:
            return []
        ref = next(k[1] for k in self.results if k[0] == "asnet")
        session = self.state.session
        others = {n: v.metrics for n, v in session.variants.items() if n != ref}
        return asnet_rows(res[0], others)

    @param.depends("results", "state.revision")
    def figures(self) -> dict:
        """``"decay"``, ``"active"``, ``"attack"``, ``"perturbation <variant>"``, ``"asnet"`` →
        plotly figure (those computed)."""
        res, figs = self.results, {}
        spectra = {k[1]: r for k, r in res.items() if k[0] == "spectra"}
        if len(spectra) == 1:
            (name, spaces), = spectra.items()
            figs["decay"] = decay_figure(spaces, title=f"Active-subspace eigenvalue decay of "
                                                       f"{name} (dashed: active dimension)")
        elif spectra:
            figs["decay"] = decay_figure(spectra)
        for (_, ref), spaces in [(k, r) for k, r in res.items() if k[0] == "counts"]:
            threshold = next(iter(spaces.values())).threshold
            figs["active"] = active_counts_figure(
                {layer: sp.active_dim for layer, sp in spaces.items()}, self.channel_table(),
                title=f"Active neurons of {ref} (at {threshold:.0%}) vs channels kept")
        attacks = {k[1]: r for k, r in res.items() if k[0] == "attack"}
        if attacks:
            figs["attack"] = attack_figure(attacks if len(attacks) > 1
                                           else next(iter(attacks.values())))
            for name, c in attacks.items():
                figs[f"perturbation {name}"] = perturbation_figure(
                    c, title=f"Active-subspace perturbation of {name} (unit norm)")
        rows = self.asnet_table()
        if rows:
            figs["asnet"] = asnet_figure(rows)
        return figs

    @param.depends("results", "state.revision")
    def asnet_markdown(self) -> str:
        rows = self.asnet_table()
        if not rows:
            return ""
        lines = ["| model | parameters | MACs | accuracy | vs original |", "|---|---|---|---|---|"]
        for r in rows:
            lines.append(f"| {r['name']} | {r['params']:,} ({r['params_vs_original']:.1%}) | "
                         f"{r['macs']:,} ({r['macs_vs_original']:.1%}) | "
                         f"{100 * r['accuracy']:.1f}% | "
                         f"{100 * r['accuracy_vs_original']:+.1f} points |")
        return "\n".join(lines)

    # --- view -----------------------------------------------------------------------------------
    @param.depends("analyses")
    def _spectra_on(self) -> bool:
        return "spectra" in self.analyses

    @param.depends("analyses")
    def _attack_on(self) -> bool:
        return "attack" in self.analyses

    @param.depends("analyses")
    def _asnet_on(self) -> bool:
        return "asnet" in self.analyses

    @param.depends("analyses")
    def _dense_on(self) -> bool:
        return "asnet" in self.analyses or "spectra" in self.analyses

    def controls(self) -> list:
        w = pn.widgets
        return [
            w.CheckBoxGroup.from_param(self.param.analyses),
            w.IntInput.from_param(self.param.samples),
            w.FloatSlider.from_param(self.param.threshold),
            w.Select.from_param(self.param.reference, visible=self._dense_on),
            w.Select.from_param(self.param.layer, visible=self._spectra_on),
            w.RadioButtonGroup.from_param(self.param.pool, color="primary", variant="outline",
                                          visible=self._spectra_on),
            w.TextInput.from_param(self.param.norms, visible=self._attack_on),
            w.IntInput.from_param(self.param.n_random, visible=self._attack_on),
            w.Select.from_param(self.param.cut, visible=self._asnet_on),
            w.IntInput.from_param(self.param.r, visible=self._asnet_on),
            w.RadioButtonGroup.from_param(self.param.head, color="primary", variant="outline",
                                          visible=self._asnet_on),
            w.IntInput.from_param(self.param.epochs, visible=self._asnet_on),
            w.IntInput.from_param(self.param.seed),
        ]

    @param.depends("results", "state.revision")
    def outputs(self):
        figs = self.figures()
        panes = []
        for key, f in figs.items():
            small = key.startswith("perturbation")
            panes.append(plotly_pane(f, f"subspace-{key}", height=f.layout.height or 400,
                                     sizing_mode="stretch_width" if not small else "fixed",
                                     width=None if not small else 420))
        return pn.Column(*panes, pn.pane.Markdown(self.asnet_markdown()),
                         sizing_mode="stretch_width")


__all__ = ["SubspacePanel", "default_cut", "parse_norms", "ALL", "ANALYSES"]
