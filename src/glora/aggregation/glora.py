"""GLoRA: gauge-aware low-rank server representation for federated LoRA (SPEC.md, "GLoRA").

Per layer and round:

1. client subspaces ``U_i`` = column basis of ``dW_i = s_i B_i A_i`` (factored; gauge-free);
2. consensus ``U_ref`` = top-``R`` eigenvectors of ``K = sum_i p_i U_i U_i^T``, found from the
   small Gram matrix of ``Z = [sqrt(p_1) U_1, ...]`` (``K`` itself is never formed);
3. core ``C = sum_i p_i s_i (U_ref^T B_i) A_i`` (``R x d_in``): the state is ``(U_ref, C)``,
   the update ``U_ref C`` is the projection of the exact average onto the consensus;
4. readout for rank ``r``: SVD of the small core, best rank-``r`` part of ``U_ref C``.

Clients are streamed: each keeps only ``r x k`` coordinates on its own factor, and the exact
solver accumulates the Gram matrix over row slabs of the client bases, each built once, so no
``d x sum r_i`` array is held; only the top eigenpairs of the Gram matrix are computed. The
randomized solver (many clients) holds the bases once, in the factors' dtype, for its products.

Two-sided variant: a right consensus ``V_ref`` from the row spaces of ``A_i`` and an ``R x R``
core ``sum_i p_i s_i (U_ref^T B_i)(A_i V_ref)``.
"""

from __future__ import annotations

import functools
import warnings
from dataclasses import dataclass

import scipy.linalg
import threadpoolctl
import torch
from torch import Tensor

from glora.errors import ConfigError

from . import linalg, subspace
from .base import ClientUpdate, RandomizedOptions, ServerState
from .registry import MethodSpec, register_method

CONSENSUS = ("uniform", "energy")
SOLVERS = ("auto", "exact", "randomized")
#: ``solver="auto"`` takes the exact solver up to this many client directions (``m = sum r_i``
#: over the clients with a nonzero update), the randomized one beyond. Measured at d = 1024 and
#: 4096, R = 16, one thread (benchmarks/results/solver_crossover.md): at m = 2048 the exact
#: solver was 1.24x faster at d = 4096 and 2.2x slower at d = 1024; at m = 4096 the randomized
#: one was 7x-16x faster.
AUTO_EXACT_MAX = 2048
#: Default tie tolerance in machine epsilons, by dtype (see ``GLoRAConfig.tie_rtol``).
DEFAULT_TIE_ULPS = {torch.float64: 1000.0, torch.float32: 100.0}


def default_tie_rtol(dtype: torch.dtype) -> float:
    """The default ``tie_rtol`` of factors of ``dtype`` (:data:`DEFAULT_TIE_ULPS` epsilons)."""
    return DEFAULT_TIE_ULPS.get(dtype, 100.0) * torch.finfo(dtype).eps


@dataclass
class GLoRAConfig(RandomizedOptions):
    """Options of GLoRA.

    Args:
        rank (`int`, *optional*): server rank ``R``; defaults to the largest client rank.
            Capped at the numerical rank of ``K``.
        consensus (`str`, defaults to `"uniform"`): ``"uniform"`` is the paper's vote (each client
            direction weighs ``p_i``); ``"energy"`` weighs each direction by its share of the
            client's squared singular values (still gauge-invariant; SPEC.md says it roughly halves
            the projection error on shared subspaces).
        two_sided (`bool`, defaults to `False`): also take a right consensus from the row spaces.
        tie_rtol (`float`, *optional*): eigenvalues of ``K`` closer than ``tie_rtol * lambda_1``
            tie, and a tie across ``rank`` is broken by the exact average; ``0`` turns this off.
            Defaults to :func:`default_tie_rtol`: 1000 machine epsilons in float64 (2.2e-13),
            100 in float32 (1.2e-5). Computed exact ties spread by about ``eps * kappa``
            (``kappa`` the condition number of the clients' factors): measured up to 400
            epsilons in float64 for ``kappa = 100`` (four orthogonal clients of equal weight,
            tests/aggregation/test_glora.py), and <= 8e-6 in float32 for ``kappa <= 100``, so
            ties are caught up to ``kappa ~ 100``. In float32 the bound cannot be wider:
            eigenvalues that are merely close (a bulk of client noise, spaced ~1e-5 there) are
            not tied: on the benchmark's clients (d=4096, N=100, r=8, R=16) the float32 result
            changed by <= 1.5e-5 under gauges of condition <= 1e3 without a tie-break, whereas
            the square root of eps (3e-4) tied ~790 of them.
        solver (`str`, defaults to `"auto"`): how ``K``'s top eigenvectors are found:
            ``"exact"``, the eigenpairs of the Gram matrix of all client directions
            (``O(d m^2)`` for ``m = sum r_i`` directions, ``O(m^2)`` memory); ``"randomized"``,
            a seeded restarted block Krylov iteration on products with ``K`` (``O(d m q)``
            each, in the factors' dtype, ``q = R + oversample``; it holds the clients' bases
            ``Z``, ``d x m`` in that dtype, the size of their ``B`` factors; options ``seed``,
            ``solver_tol``, ``max_iter``, ``oversample`` of
            :class:`~glora.aggregation.base.RandomizedOptions`), which reports its products,
            residual, eigengap and an error estimate of the update in ``info`` (infinite where
            eigenvalues tie across ``R``: no bound then); ``"auto"``, exact up to
            :data:`AUTO_EXACT_MAX` directions, randomized
            beyond (``info["solver"]`` says which ran).
    """

    rank: int | None = None
    consensus: str = "uniform"
    two_sided: bool = False
    tie_rtol: float | None = None
    solver: str = "auto"

    def __post_init__(self) -> None:
        problems = []
        if self.rank is not None and (isinstance(self.rank, bool) or not isinstance(self.rank, int)
                                      or self.rank < 1):
            problems.append(f"`rank` must be a positive integer or None, got {self.rank!r}.")
        if self.consensus not in CONSENSUS:
            problems.append(f"`consensus` must be one of {CONSENSUS}, got {self.consensus!r}.")
        if self.tie_rtol is not None and not self.tie_rtol >= 0:
            problems.append(f"`tie_rtol` must be non-negative, got {self.tie_rtol!r}.")
        if self.solver not in SOLVERS:
            problems.append(f"`solver` must be one of {SOLVERS}, got {self.solver!r}.")
        problems += self.randomized_problems()
        if problems:
            raise ConfigError(problems)


@dataclass
class GLoRAState(ServerState):
    """``U`` (``d_out x R``, orthonormal), ``C`` (``R x d_in``, or ``R x R`` with ``V``)."""

    U: Tensor
    C: Tensor
    V: Tensor | None = None  # d_in x R, two-sided only

    def delta(self) -> Tensor:
        return self.U @ (self.C if self.V is None else self.C @ self.V.mT)

    def factors(self) -> tuple[Tensor, Tensor]:
        return self.U, (self.C if self.V is None else self.C @ self.V.mT)

    def readout(self, rank: int, scaling: float) -> tuple[Tensor, Tensor]:
        P, S, Qh = torch.linalg.svd(self.C.double(), full_matrices=False)
        P, S, Qh = P.to(self.C.dtype), S.to(self.C.dtype), Qh.to(self.C.dtype)
        B, A = linalg.split_factors(self.U @ P, S, Qh, rank, scaling)
        return B, (A if self.V is None else A @ self.V.mT)


#: Elements of one slab of ``Z`` (rows of every client's scaled basis) held while the Gram matrix
#: is accumulated; each slab is rebuilt from the clients' coordinates, so ``Z`` is never whole.
SLAB_ELEMENTS = 2**18
#: Column blocks of the Gram matrix; the blocks above the diagonal are not computed.
GRAM_BLOCKS = 4


@dataclass(frozen=True)
class ClientSpace:
    """One client's directions on one side, kept as small coordinates on its own factor.

    ``factor @ coords`` (``d x k``) is an orthonormal basis of the client's column space (left
    side: ``factor = B_i``) or row space (right side: ``factor = A_i^T``); ``coefs`` (``k``) are
    the directions' weights in ``K``. ``other`` is the opposite factor (``A_i``, or ``B_i^T``) and
    ``weight = p_i s_i``: ``weight * factor @ other`` is the client's share of the exact average.
    ``norm`` is the Frobenius norm of ``factor @ other`` (from its singular values, the ones
    dropped as zero left out).
    """

    factor: Tensor  # d x r
    coords: Tensor  # r x k, float64
    coefs: Tensor  # k, float64
    other: Tensor  # r x d_other
    weight: float
    norm: float

    def scaled_coords(self) -> Tensor:
        """``coords diag(sqrt coefs)`` (``r x k``, float64): ``factor @`` it is the client's block of
        ``Z``. Products with it are taken in float64, so the rebuilt bases stay orthonormal to the
        dtype's precision however ill-conditioned the factors are."""
        return self.coords * self.coefs.sqrt()


def _gram(spaces: list[ClientSpace]) -> Tensor:
    """``Z^T Z`` (``m x m``, ``m = sum k_i``) of ``Z = [U_1 diag(sqrt c_1), ...]``.

    Accumulated over row slabs of ``Z`` (``SLAB_ELEMENTS``): each client's basis is built once,
    slab by slab, consecutive clients of one shape in one batched product (``BATCH`` at a time).
    Only the lower triangle is read (:func:`_top_eigh`), so each slab updates the lower block
    triangle of ``GRAM_BLOCKS`` column blocks: about ``5/8`` of the full product.
    """
    dtype = spaces[0].factor.dtype
    d = spaces[0].factor.shape[0]
    batches = _batches(spaces)
    m = sum(c.shape[0] * c.shape[2] for _, c in batches)
    height = max(1, min(d, SLAB_ELEMENTS // m))
    G = torch.zeros(m, m, dtype=dtype)
    edges = sorted({round(m * j / GRAM_BLOCKS) for j in range(GRAM_BLOCKS + 1)})
    slab = torch.empty(height, m, dtype=dtype)
    for lo in range(0, d, height):
        rows = min(height, d - lo)
        start = 0
        for factors, coords in batches:
            g, _, k = coords.shape
            part = torch.stack([f[lo:lo + rows] for f in factors]).double()  # g x rows x r
            slab[:rows, start:start + g * k] = torch.bmm(part, coords).transpose(0, 1).reshape(
                rows, g * k)
            start += g * k
        for a, b in zip(edges[:-1], edges[1:]):
            G[a:, a:b].addmm_(slab[:rows, a:].mT, slab[:rows, a:b])
    return G


#: Clients whose bases are built in one batched product (bounds its float64 scratch).
BATCH = 8


def _runs(spaces: list[ClientSpace], size: int) -> list[list[ClientSpace]]:
    """Runs of at most ``size`` consecutive clients with equal ``coords`` shapes, in client order
    (the column order of ``Z``): what one batched product can take."""
    runs: list[list[ClientSpace]] = []
    for s in spaces:
        if not runs or len(runs[-1]) == size or runs[-1][0].coords.shape != s.coords.shape:
            runs.append([])
        runs[-1].append(s)
    return runs


def _batches(spaces: list[ClientSpace]) -> list[tuple[list[Tensor], Tensor]]:
    """Runs of at most ``BATCH`` consecutive clients of one shape: their factors and stacked
    scaled coordinates (``g x r x k``)."""
    return [([s.factor for s in run], torch.stack([s.scaled_coords() for s in run]))
            for run in _runs(spaces, BATCH)]


def _stacked_basis(spaces: list[ClientSpace]) -> Tensor:
    """``Z^T`` (``m x d``) for ``Z = [U_1 diag(sqrt c_1), ...]``, in the factors' dtype: each
    block built in float64 (orthonormal to the dtype's precision whatever the gauge), then
    rounded once.

    One client at a time, each a run of contiguous rows: its float64 block stays in cache, where
    stacking runs of clients for a batched product took 1.4x-2x longer, and writing a client's
    columns of a row-major ``Z`` took 1.45x longer on 1,000 clients of ranks 4-16."""
    m = sum(s.coords.shape[1] for s in spaces)
    Zt = spaces[0].factor.new_empty(m, spaces[0].factor.shape[0])  # filled in place
    start = 0
    for s in spaces:
        coords = s.scaled_coords()
        Zt[start:start + coords.shape[1]] = coords.mT @ s.factor.double().mT
        start += coords.shape[1]
    return Zt


def _combine(spaces: list[ClientSpace], coefficients: Tensor) -> Tensor:
    """``Z @ coefficients`` (``d x q``) for ``coefficients`` of shape ``m x q``, one client at a time
    (accumulated in float64)."""
    out = torch.zeros(spaces[0].factor.shape[0], coefficients.shape[1], dtype=torch.float64)
    coefficients = coefficients.double()
    start = 0
    for s in spaces:
        c = s.scaled_coords()
        out.addmm_(s.factor.double(), c @ coefficients[start:start + c.shape[1]])
        start += c.shape[1]
    return out.to(spaces[0].factor.dtype)


def _project(spaces: list[ClientSpace], W: Tensor) -> Tensor:
    """``W^T D`` (``q x d_other``) for ``W`` (``d x q``), ``D = sum_i factor_i other_i`` the exact
    average (or its transpose on the right side), in float64 (:func:`linalg.project_average`),
    returned in ``W``'s dtype."""
    return linalg.project_average(W, [s.factor for s in spaces], [s.other for s in spaces],
                                  [s.weight for s in spaces]).to(W.dtype)


def _tie_order(spaces: list[ClientSpace], W: Tensor, rtol: float) -> Tensor:
    """Order the tied directions ``W`` (``d x q``) by the SVD of ``W^T D``: an orthogonal ``q x q``.

    The choice is made by the exact average itself, so it does not depend on the gauge.
    Warns when the average ranks them equally too.
    """
    P, S, _ = torch.linalg.svd(_project(spaces, W).double(), full_matrices=False)
    q = W.shape[1]
    if P.shape[1] < q:  # the average has no component on some tied directions
        P = torch.linalg.qr(torch.cat([P, torch.eye(q, dtype=P.dtype)], 1))[0][:, :q]
    if S.numel() > 1 and bool(((S[:-1] - S[1:]) <= rtol * S[0].clamp_min(1e-30)).any()):
        warnings.warn("GLoRA: tied eigenvalues of K could not be ranked by the update either; "
                      "`U_ref` is not unique and gauge invariance may be lost. Change the "
                      "server `rank` to fall on an eigengap (see state.info['eigenvalues']).",
                      stacklevel=4)
    return P.to(W.dtype)


#: The randomized solver knows the eigenvalue after ``R`` to this fraction of the gap before it:
#: enough for the gap in the error estimate (it is taken net of that residual) and for ties.
NEXT_FRACTION = 0.1
#: Eigenpairs of the Gram matrix computed beyond the server rank (to see a tie across it).
EXTRA_EIGENPAIRS = 8


@functools.cache
def _blas_threads() -> threadpoolctl.ThreadpoolController:
    """The process's BLAS thread pools (found once: the lookup scans every loaded library)."""
    return threadpoolctl.ThreadpoolController()


def _top_eigh(G: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Top-``k`` eigenpairs of the symmetric ``G`` (lower triangle read; destroyed), descending.

    LAPACK's ``?syevr`` on the requested index range: ``O(m k)`` workspace besides ``G`` itself,
    instead of the ``O(m^2)`` of a full ``eigh``. ``G`` is small (``sum r_i`` square): on an
    accelerator it goes to the CPU for this and the eigenpairs come back.
    """
    m = G.shape[0]
    # scipy's BLAS starts a thread per core unless told otherwise; next to busy worker processes
    # those threads spin-wait and one call ran 10-50x slower. Use torch's thread count instead.
    with _blas_threads().limit(limits=torch.get_num_threads(), user_api="blas"):
        # G is row-major; its transpose is a column-major view whose upper triangle is G's lower.
        lam, vec = scipy.linalg.eigh(G.cpu().numpy().T, lower=False,
                                     subset_by_index=[m - k, m - 1], driver="evr",
                                     overwrite_a=True, check_finite=False)
    return (torch.from_numpy(lam[::-1].copy()).to(G.device),
            torch.from_numpy(vec[:, ::-1].copy()).to(G.device))


def consensus_subspace(spaces: list[ClientSpace], rank: int, tie_rtol: float,
                       config: GLoRAConfig | None = None) -> tuple[Tensor, dict]:
    """Top-``rank`` eigenvectors of ``K = sum_i U_i diag(c_i) U_i^T``, never forming ``K``.

    ``solver="exact"`` (default): with ``Z = [U_1 diag(sqrt c_1), ...]`` (never stacked whole:
    built from the clients' coordinates in row slabs), eigenpairs ``(lam, v)`` of ``Z^T Z`` give
    ``K``'s eigenvectors ``Z v / sqrt(lam)``. Only the top ``rank + EXTRA_EIGENPAIRS`` eigenpairs
    are computed, more if a tied block runs past them (the Gram matrix is rebuilt).
    ``solver="randomized"``: Ritz pairs of a seeded block Krylov iteration on
    ``X -> Z (Z^T X)`` (:func:`_randomized`); ``"auto"``: exact up to :data:`AUTO_EXACT_MAX`
    directions. Either way, where eigenvalues closer than ``tie_rtol * lam_1``
    straddle ``rank``, the tied block is ordered by the exact average (:func:`_tie_order`), not
    by arithmetic noise.

    Returns ``U_ref`` (``d x R'``, ``R' <= rank``, capped at the numerical rank) and an info dict.
    """
    dtype = spaces[0].factor.dtype
    m = sum(s.coords.shape[1] for s in spaces)
    solver = "exact" if config is None else config.solver
    if solver == "auto":
        solver = "exact" if m <= AUTO_EXACT_MAX else "randomized"
    if solver == "randomized":
        assert config is not None
        lam, directions, extra = _randomized(spaces, rank, config)
        R, numerical_rank = _rank(lam, rank, dtype)
        lo, hi = _tied_block(lam, R, numerical_rank, tie_rtol * float(lam[0]))
        if hi > R and hi == lam.numel() < min(m, directions.shape[0]):
            warnings.warn(
                f"GLoRA's randomized solver: K's eigenvalues tie across R = {R} up to the last of "
                f"its {hi} Ritz pairs, so the tie may run on past them; it is broken among those "
                f"{hi - lo} directions, where the exact solver would take every tied one, and "
                "the update is set by that tie-break, not by K (no error bound). Choose a `rank` "
                "on an eigengap (state.info['eigenvalues']).", stacklevel=4)
    else:
        k = min(m, rank + EXTRA_EIGENPAIRS)
        while True:
            lam, vec = _top_eigh(_gram(spaces), k)  # descending; k, m x k
            lam = lam.double().clamp_min(0)
            # rank of K: exact when it is below k, else only known to be >= k (> rank)
            R, numerical_rank = _rank(lam, rank, dtype)
            lo, hi = _tied_block(lam, R, numerical_rank, tie_rtol * float(lam[0]))
            if hi < k or k == m or numerical_rank < k:
                break
            k = min(m, 2 * k)  # the tied block may continue past the computed eigenpairs
        top = vec[:, :hi]  # m x hi, eigenvectors of lam[:hi]
        del vec
        directions = _combine(spaces, top / lam[:hi].sqrt().to(top.dtype))  # d x hi
        extra = {"solver": "exact"}
    nxt = float(lam[R]) if R < lam.numel() else 0.0
    gap = (float(lam[R - 1]) - nxt) / float(lam[0])
    info: dict = {"requested_rank": rank, "rank": R, "eigenvalues": lam[: R + 1].tolist(),
                  "eigengap": gap, "tie_broken": False, "rank_capped": R < rank, **extra}
    if hi > R:
        order = _tie_order(spaces, directions[:, lo:hi], linalg.rtol_for(dtype))
        directions = torch.cat([directions[:, :lo], directions[:, lo:hi] @ order[:, : R - lo]], 1)
        info.update(tie_broken=True, tied=(lo, hi))
    U_ref, r = torch.linalg.qr(directions[:, :R])
    return U_ref * torch.sign(torch.diagonal(r)).where(torch.diagonal(r) != 0, 1.0), info


def _rank(lam: Tensor, rank: int, dtype: torch.dtype) -> tuple[int, int]:
    """``(R, numerical rank of K)`` from its top eigenvalues (descending)."""
    numerical_rank = int((lam > linalg.rtol_for(dtype) * lam[0]).sum())
    return min(rank, numerical_rank), numerical_rank


def _tied_block(lam: Tensor, R: int, numerical_rank: int, tol: float) -> tuple[int, int]:
    """``[lo, hi)``: the eigenvalues within ``tol`` of their neighbours that straddle ``R``
    (``(R, R)`` when none does)."""
    lo, hi = R, R
    if R < numerical_rank and float(lam[R - 1]) - float(lam[R]) <= tol:
        while lo > 0 and float(lam[lo - 1]) - float(lam[lo]) <= tol:
            lo -= 1
        while hi < min(numerical_rank, lam.numel()) and float(lam[hi - 1]) - float(lam[hi]) <= tol:
            hi += 1
    return lo, hi


def _randomized(spaces: list[ClientSpace], rank: int, config: GLoRAConfig,
                ) -> tuple[Tensor, Tensor, dict]:
    """Ritz values and vectors (``d x q``) of ``K`` from a seeded block Krylov iteration, and what
    the iteration reports: its products, the largest relative residual of the ``R`` wanted pairs and
    a Davis-Kahan bound on the sine of the angle between their span and ``K``'s top-``R``
    eigenspace (``||residuals||_F / gap``, the gap from the Ritz values less the next residual)."""
    d = spaces[0].factor.shape[0]
    m = sum(s.coords.shape[1] for s in spaces)
    block = min(m, d, rank + config.oversample)

    Zt = _stacked_basis(spaces)

    def apply(X: Tensor) -> Tensor:  # K X = Z (Z^T X), in the factors' dtype
        return (Zt.mT @ (Zt @ X.to(Zt.dtype))).double()

    wanted = min(rank, block)
    tol = max(config.solver_tol, subspace.PRODUCT_ULPS * torch.finfo(Zt.dtype).eps)
    pairs = subspace.top_eigenpairs(apply, d, wanted, block, config.seed, tol, config.max_iter,
                                    next_fraction=NEXT_FRACTION, inner=m)
    lam = pairs.values.clamp_min(0)
    lam0 = float(lam[0]) if float(lam[0]) > 0 else 1.0
    gap = pairs.gap(wanted)
    extra = {"solver": "randomized", "iterations": pairs.iterations,
             "residual": float(pairs.residuals[:wanted].max()) / lam0,
             "subspace_error": pairs.sine(wanted)}
    if extra["residual"] > tol:
        warnings.warn(f"GLoRA's randomized solver stopped after {config.max_iter} products with "
                      f"a relative residual of {extra['residual']:.2e} (tolerance "
                      f"{tol:g}): K's eigengap at R ({gap / lam0:.2e} of lambda_1) "
                      "is too small for it. Raise `max_iter`, or choose a `rank` on a gap "
                      "(state.info['eigenvalues']).", stacklevel=4)
    return lam, pairs.vectors.to(spaces[0].factor.dtype), extra


def client_spaces(updates: list[ClientUpdate], p: list[float], consensus: str,
                  ) -> tuple[list[ClientSpace], list[ClientSpace]]:
    """Left and right :class:`ClientSpace` of every client with a nonzero update.

    A zero update has no directions and is left out of ``K``: it adds nothing to the average.
    """
    left, right = [], []
    bases = linalg.factored_column_bases([u.B for u in updates], [u.A for u in updates])
    for pi, u, (X, S, Y) in zip(p, updates, bases):
        if S.numel() == 0:
            continue
        coefs = pi * (S**2 / (S**2).sum() if consensus == "energy" else torch.ones_like(S))
        norm = float(S.norm())
        left.append(ClientSpace(u.B, X, coefs, u.A, pi * u.scaling, norm))
        right.append(ClientSpace(u.A.mT, Y, coefs, u.B.mT, pi * u.scaling, norm))
    return left, right


def aggregate_glora(updates: list[ClientUpdate], p: list[float], config: GLoRAConfig,
                    ) -> GLoRAState:
    """GLoRA's server step for one layer (see the module docstring).

    Streams over clients: no array of all clients' bases or factors (``d x sum r_i``) is built.
    """
    dtype = updates[0].B.dtype
    rank = config.rank or max(u.rank for u in updates)
    tie_rtol = default_tie_rtol(dtype) if config.tie_rtol is None else config.tie_rtol
    left, right = client_spaces(updates, p, config.consensus)
    if not left:
        d_out, d_in = updates[0].B.shape[0], updates[0].A.shape[1]
        info = {"rank": 0, "requested_rank": rank, "eigengap": 0.0, "eigenvalues": []}
        return GLoRAState("glora", updates[0].B.new_zeros(d_out, 0),
                          updates[0].B.new_zeros(0, d_in), info=info)

    U_ref, info = consensus_subspace(left, rank, tie_rtol, config)
    core = _project(left, U_ref)  # R x d_in: U_ref^T (sum_i p_i s_i B_i A_i)
    if "subspace_error" in info:  # ||D|| <= sum_i ||dW_i||
        norms = sum(s.weight * s.norm for s in left)
        # With eigenvalues tied across R, the tie-break by the update chooses the subspace, not
        # K: a tie found at slightly different eigenvalues (another solver, another precision)
        # may choose another one. Measured: 1.2e-3 apart at d=4096, N=1000, gap 6e-6
        # (benchmarks/results/scale.md). No bound then.
        info["error_estimate"] = float("inf") if info["tie_broken"] else subspace.projection_error(
            info["subspace_error"], norms, float(core.double().norm()), dtype)
    if not config.two_sided:
        return GLoRAState("glora", U_ref, core, info=info)
    V_ref, info["right"] = consensus_subspace(right, rank, tie_rtol, config)
    return GLoRAState("glora", U_ref, core @ V_ref, V_ref, info=info)


register_method(MethodSpec("glora", GLoRAConfig, aggregate_glora, mixed_ranks=True,
                           paper="Beyond Factor Aggregation: Gauge-Aware Low-Rank Server "
                                 "Representations for Federated LoRA"))
