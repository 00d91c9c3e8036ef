"""The Geometry panel: how compression moves the last layer's features (Robustness Lottery).

For each chosen variant, the angle, length and margin of every sample's penultimate feature
(:func:`~workbench.analysis.geometry.feature_geometry`) on the same test samples, shown as
angle-vs-length scatters per variant, margin histograms, the drift from a reference model, and
a 2-D embedding of the features (PCA, t-SNE or UMAP). Across variants: the model similarity map
of their geometry vectors with its minimum spanning tree, parallel coordinates of those vectors,
the CKA matrix of the features and neural collapse. Click a point to select that sample in every
view.

Examples
--------
>>> import workbench
>>> session = workbench.Session.default(progress=False)
>>> _ = session.prune("random", sparsity=0.5)
>>> panel = GeometryPanel.from_session(session, samples=60)
>>> panel.variants = ["base", "random-50"]
>>> sorted({k[0] for k in panel.run_now()})
['cka', 'collapse', 'embedding', 'geometry', 'indices', 'similarity', 'vectors']
>>> fig = panel.scatter_figure()
>>> g = panel.results[("geometry", "base")]
>>> bool((fig.data[0].x == g.angle[g.labels == 0]).all())
True
"""

from __future__ import annotations

from typing import Mapping

import numpy as np
import panel as pn
import param

from workbench.analysis.geometry import EMBEDDINGS, drift, embed, feature_geometry
from workbench.analysis.similarity import (CLASS_STATS, SIMILARITY_METHODS, geometry_vector,
                                           linear_cka, model_similarity, neural_collapse)
from workbench.panels.analysis_base import Job
from workbench.panels.samples import SampleAnalysisPanel
from workbench.plots.geometry import (COLORINGS, angle_length_figure, cka_figure,
                                      collapse_figure, drift_figure, embedding_figure,
                                      margin_histogram_figure, parallel_coordinates_figure,
                                      similarity_figure)
from workbench.session import BASE

ALL = "all"


def cka_matrix(features: Mapping) -> np.ndarray:
    """Linear CKA of every pair of representations (name → ``(n, d)`` features, same samples).

    Examples
    --------
    >>> import numpy as np
    >>> x = np.random.default_rng(0).normal(size=(30, 4))
    >>> cka_matrix({"a": x, "b": 2 * x, "c": x[:, :1]}).round(3)[0].tolist()[:2]
    [1.0, 1.0]
    """
    names = list(features)
    m = np.eye(len(names))
    for i in range(len(names)):
        for j in range(i + 1, len(names)):
            m[i, j] = m[j, i] = linear_cka(features[names[i]], features[names[j]])
    return m


def one_thread(fn, *args, **kwargs):
    """``fn(*args, **kwargs)`` with the BLAS and OpenMP pools limited to one thread.

    scikit-learn's t-SNE / MDS and PyTorch each bring an OpenMP runtime; on a busy 2-core
    machine their threads spin against each other (t-SNE of 150 samples: 25 s instead of 1 s).
    The results are the same.
    """
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1):
        return fn(*args, **kwargs)


class GeometryPanel(SampleAnalysisPanel):
    """Last-layer feature geometry of several variants, linked sample by sample."""

    title = "Geometry"
    intro = ("Choose variants and press **Run**: the angle, length and margin of each sample's "
             "last-layer feature, embeddings and model similarity take about a second per "
             "variant on 300 samples (t-SNE and UMAP take longer).")
    publishes = {"geometry": "geometry"}

    samples = param.Integer(default=300, bounds=(4, None), label="Samples",
                            doc="Test samples used (the first of a fixed class-stratified "
                                "order: the same samples in every panel).")
    embedding = param.Selector(default="pca", objects=list(EMBEDDINGS), label="Embedding",
                               doc="PCA is instant; t-SNE and UMAP take seconds (UMAP "
                                   "compiles for ~30 s on first use).")
    similarity = param.Selector(default="mds", objects=list(SIMILARITY_METHODS),
                                label="Model map", doc="UMAP needs at least 4 variants.")
    seed = param.Integer(default=0, bounds=(0, None))
    reference = param.Selector(default=BASE, objects=[BASE], label="Reference (drift from)")
    color = param.Selector(default="class", objects=list(COLORINGS), label="Colour by")
    only_class = param.Selector(default=ALL, objects=[ALL], label="Class")
    stat = param.Selector(default="margin_mean", objects=list(CLASS_STATS),
                          label="Parallel coordinates: per-class")

    def __init__(self, **params):
        super().__init__(**params)
        k = self.state.session.data.num_classes
        self.param.only_class.objects = [ALL, *range(k)]

    def variants_changed(self, names):
        ref = self.reference if self.reference in names else (names[0] if names else BASE)
        self.param.reference.objects = names or [BASE]
        self.reference = ref

    # --- plan -------------------------------------------------------------------------------
    def plan(self) -> list[Job]:
        idx, x, y = self.sample_data()
        key_idx = tuple(idx.tolist())
        method, seed = self.embedding, int(self.seed)
        names = list(self.variants)
        jobs = [self.indices_job(idx)]
        for name in names:
            v = self.state.variant(name)
            vk = self.variant_key(name)
            jobs += [
                Job(("geometry", name), ("geometry", vk, key_idx), f"geometry of {name}",
                    lambda done, v=v: feature_geometry(v, x, y)),
                Job(("embedding", name), ("embedding", vk, key_idx, method, seed),
                    f"{method} embedding of {name}",
                    lambda done, n=name: one_thread(embed, done[("geometry", n)], method,
                                                    seed),
                    needs=(("geometry", name),)),
                Job(("collapse", name), ("collapse", vk, key_idx), f"neural collapse of {name}",
                    lambda done, n=name: neural_collapse(done[("geometry", n)]),
                    needs=(("geometry", name),)),
            ]
        geo = tuple(("geometry", n) for n in names)
        all_keys = tuple(self.variant_key(n) for n in names)
        jobs.append(Job(("vectors",), ("vectors", all_keys, key_idx), "geometry vectors",
                        lambda done: {n: geometry_vector(done[("geometry", n)]) for n in names},
                        needs=geo))
        if len(names) >= 2:
            sim = self.similarity
            jobs += [
                Job(("similarity",), ("similarity", all_keys, key_idx, sim, seed),
                    f"model map ({sim})",
                    lambda done: one_thread(model_similarity, done[("vectors",)], sim,
                                            seed=seed),
                    needs=(("vectors",),)),
                Job(("cka",), ("cka", all_keys, key_idx), "CKA",
                    lambda done: cka_matrix({n: done[("geometry", n)].features for n in names}),
                    needs=geo),
            ]
        return jobs

    # --- results ------------------------------------------------------------------------------
    def _by_variant(self, kind: str) -> dict:
        res = {k[1]: r for k, r in self.results.items() if k[0] == kind and len(k) > 1}
        return {n: res[n] for n in self.state.variants if n in res}

    def geometries(self) -> dict:
        """Variant name → Geometry of the last run."""
        return self._by_variant("geometry")

    def _cls(self):
        return None if self.only_class == ALL else int(self.only_class)

    # --- figures (derivations) -----------------------------------------------------------------
    @param.depends("results", "color", "only_class", "selection.index")
    def scatter_figure(self):
        geos = self.geometries()
        if not geos:
            return None
        return angle_length_figure(geos, indices=self.indices, color=self.color,
                                   cls=self._cls(), selected=self.selection.index)

    @param.depends("results")
    def margin_figure(self):
        geos = self.geometries()
        return margin_histogram_figure(geos) if geos else None

    @param.depends("results", "reference", "selection.index")
    def drift_figure(self):
        geos = self.geometries()
        ref = self.reference
        if ref not in geos or len(geos) < 2:
            return None
        drifts = {n: drift(geos[ref], g) for n, g in geos.items() if n != ref}
        return drift_figure(drifts, indices=self.indices, selected=self.selection.index,
                            reference=ref)

    @param.depends("results", "color", "selection.index")
    def embedding_figure(self):
        embs, geos = self._by_variant("embedding"), self.geometries()
        embs = {n: e for n, e in embs.items() if n in geos}
        if not embs:
            return None
        return embedding_figure(embs, geos, indices=self.indices, color=self.color,
                                selected=self.selection.index)

    @param.depends("results")
    def similarity_figure(self):
        sim = self.results.get(("similarity",))
        return None if sim is None else similarity_figure(sim)

    @param.depends("results", "stat")
    def parallel_figure(self):
        vectors = self.results.get(("vectors",))
        if not vectors:
            return None
        k = self.state.session.data.num_classes
        return parallel_coordinates_figure(vectors, k, stat=self.stat)

    @param.depends("results")
    def cka_figure(self):
        m = self.results.get(("cka",))
        if m is None:
            return None
        names = [n for n in self.geometries()]
        return cka_figure(names, m) if len(names) == len(m) else None

    @param.depends("results")
    def collapse_figure(self):
        ncs = self._by_variant("collapse")
        return collapse_figure(ncs) if ncs else None

    # --- view -----------------------------------------------------------------------------------
    def controls(self) -> list:
        w = pn.widgets
        return [
            w.IntInput.from_param(self.param.samples),
            w.Select.from_param(self.param.embedding),
            w.Select.from_param(self.param.similarity),
            w.IntInput.from_param(self.param.seed),
        ]

    @param.depends("results")
    def outputs(self):
        if not self.geometries():
            return self.outputs_with_samples()
        w = pn.widgets
        options = pn.Row(w.RadioButtonGroup.from_param(self.param.color, color="primary",
                                                       variant="outline"),
                         w.Select.from_param(self.param.only_class, width=110),
                         w.Select.from_param(self.param.reference, width=200))
        items = [options, self.exportable(self.scatter_figure),
                 self.exportable(self.embedding_figure)]
        if len(self.geometries()) >= 2:
            items.append(self.exportable(self.drift_figure))
        items.append(pn.Row(self.exportable(self.margin_figure),
                            self.exportable(self.collapse_figure), sizing_mode="stretch_width"))
        if ("similarity",) in self.results or ("cka",) in self.results:
            items.append(pn.Row(self.exportable(self.similarity_figure),
                                self.exportable(self.cka_figure), sizing_mode="stretch_width"))
        items += [w.Select.from_param(self.param.stat, width=260),
                  self.exportable(self.parallel_figure)]
        return self.outputs_with_samples(*items)


__all__ = ["GeometryPanel", "cka_matrix", "one_thread"]
