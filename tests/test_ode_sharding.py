"""Population fits with the subjects split across devices (jax.sharding): the same
results as on one device, with the padding subjects (10 subjects on 4 devices) ignored.
The same process checks the FOCEI hypergradient with a full Ω (log-Cholesky) against
central finite differences (at the lowered optimization level: a cheap compilation).

Runs in a subprocess with ``XLA_FLAGS=--xla_force_host_platform_device_count=4`` (the flag
must be set before JAX starts); XLA's optimization level is lowered there to halve the two
compilations (both sides of every comparison run in that same process)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = r"""
import json, sys
import jax
jax.config.update("jax_enable_x64", True)
import jax.numpy as jnp
import numpy as np
from invcal import ode
from invcal.ode import loops, sharding
from invcal.ode import population as P
from problems.hierarchical_ode import SEED_TRUTH, seed_events, seed_model

assert len(jax.devices()) == 4, jax.devices()
algorithm = sys.argv[1]
events, _ = seed_events(10, times=np.arange(0.0, 3.01, 0.5))
model = seed_model(rtol=1e-8, atol=1e-10)
theta = {**SEED_TRUTH, "omega_p": 0.35}
out = {}
for dev in (1, 4):
    obj = ode.population_objective(model, events, theta, devices=dev)
    fit = ode.fit_population(
        model, events, init=theta, devices=dev, max_iter=4, algorithm=algorithm
    )
    out[dev] = {
        "value": obj.value,
        "grad_z": obj.grad_z.tolist(),
        "eta": obj.eta.tolist(),
        "subject_value": obj.subject_value.tolist(),
        "fit_theta": fit.theta,
        "fit_loglik": fit.loglik,
        "fit_evals": fit.evaluations,
        "fit_eta": np.stack(list(fit.eta.values()), 1).tolist(),
        "fit_algorithm": fit.algorithm,
    }
    if algorithm != "lbfgs":
        continue
if algorithm != "lbfgs":
    json.dump(out, sys.stdout)
    sys.exit(0)
# FOCEI hypergradient with a full Omega vs central differences (one-device program)
theta_full = {"p": 2.0, "q": 1.0, "omega_chol_p": 0.35, "omega_chol_q": 0.5,
              "omega_chol_q_p": 0.15, "sigma_add": 0.1}
kw = {"devices": 1, "inner_tol": 1e-12, "omega": "full"}
obj = ode.population_objective(model, events, theta_full, **kw)
_, _, _, space = P._prepare(
    model, events, theta_full, None, "additive", "focei", None, omega="full"
)
out["fd"] = []
for d in (np.eye(6)[4], np.array([0.3, -0.5, 0.7, 0.2, -0.4, 0.6])):
    vals = [
        ode.population_objective(
            model, events,
            {k: float(v) for k, v in space.to_theta(jnp.asarray(obj.z + s * 1e-5 * d)).items()},
            eta0=obj.eta, **kw,
        ).value
        for s in (1.0, -1.0)
    ]
    out["fd"].append([float(obj.grad_z @ d), (vals[0] - vals[1]) / 2e-5])
out["names"] = list(obj.names)
# the sharded run keeps its per-subject results on the 4 devices
mesh = ode.subject_mesh(4)
pop, ev, arrays, space = P._prepare(model, events, theta, None, "additive", "focei", None)
a, e0, valid = sharding._shard_subjects(arrays, jnp.zeros((10, 2)), mesh)
opts = loops._options(0, 1.0, 1.0, 1e-9, 50, 1.0, min_iter=0)
run = loops._fit_lbfgs(pop, space, a, space.to_z(space.validate(theta)), e0, opts, valid, mesh)
out["padded"] = list(a.obs_t.shape)
out["devices"] = len(run["eta"].sharding.device_set)
out["valid"] = np.asarray(valid).tolist()
try:
    ode.subject_mesh(5)
except ValueError as e:
    out["too_many"] = str(e)
json.dump(out, sys.stdout)
"""


def run_on_4_devices(algorithm):
    env = dict(os.environ)
    env["XLA_FLAGS"] = (
        "--xla_force_host_platform_device_count=4 --xla_backend_optimization_level=0 "
        "--xla_llvm_disable_expensive_passes=true"
    )
    env["JAX_PLATFORMS"] = "cpu"
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, algorithm],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout)


@pytest.fixture(scope="module")
def sharded():
    return run_on_4_devices("lbfgs")


def test_sharded_objective_equals_unsharded(sharded):
    one, four = sharded["1"], sharded["4"]
    assert four["value"] == pytest.approx(one["value"], rel=1e-13, abs=1e-12)
    assert four["grad_z"] == pytest.approx(one["grad_z"], rel=1e-12, abs=1e-12)
    assert four["eta"] == [pytest.approx(r, abs=1e-12) for r in one["eta"]]
    assert four["subject_value"] == pytest.approx(one["subject_value"], rel=1e-12, abs=1e-12)
    assert len(one["eta"]) == 10  # padding removed


def test_sharded_fit_equals_unsharded(sharded):
    one, four = sharded["1"], sharded["4"]
    assert four["fit_evals"] == one["fit_evals"]
    assert four["fit_theta"] == pytest.approx(one["fit_theta"], rel=1e-10)
    assert four["fit_loglik"] == pytest.approx(one["fit_loglik"], rel=1e-12)
    assert four["fit_eta"] == [pytest.approx(r, abs=1e-10) for r in one["fit_eta"]]


def test_full_omega_focei_hypergradient_matches_finite_differences(sharded):
    assert sharded["names"][2:5] == ["omega_chol_p", "omega_chol_q", "omega_chol_q_p"]
    for analytic, fd in sharded["fd"]:  # off-diagonal entry alone; every coordinate at once
        assert abs(analytic - fd) <= 1e-5 * abs(fd)
        assert abs(fd) > 1e-2


def test_subjects_padded_and_split_across_devices(sharded):
    assert sharded["padded"] == [12, 7]  # 10 subjects padded to a multiple of 4
    assert sharded["valid"] == [True] * 10 + [False] * 2
    assert sharded["devices"] == 4
    assert "between 1 and the 4 available" in sharded["too_many"]


def test_subject_mesh_arguments():
    import jax

    from invcal import ode

    assert ode.subject_mesh() is None  # one CPU device in the test process
    assert ode.subject_mesh(1) is None
    with pytest.raises(TypeError, match="devices must be None"):
        ode.subject_mesh("gpu")
    with pytest.raises(ValueError, match="between 1 and"):
        ode.subject_mesh(0)
    mesh = jax.sharding.Mesh(jax.devices(), ("x",))
    with pytest.raises(ValueError, match="single axis 'subjects'"):
        ode.subject_mesh(mesh)


@pytest.mark.slow
def test_sharded_lindstrom_bates_equals_unsharded():
    out = run_on_4_devices("lindstrom-bates")
    one, four = out["1"], out["4"]
    assert one["fit_algorithm"] == four["fit_algorithm"] == "lindstrom-bates"
    assert four["fit_theta"] == pytest.approx(one["fit_theta"], rel=1e-10)
    assert four["fit_loglik"] == pytest.approx(one["fit_loglik"], rel=1e-12)
    assert four["fit_eta"] == [pytest.approx(r, abs=1e-10) for r in one["fit_eta"]]
