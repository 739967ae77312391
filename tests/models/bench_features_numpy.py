#!/usr/bin/env python3
"""numpy baselines for `cargo bench -p edge-agent --bench features`: the same 12 features on the
same windows (raw f64 file: windows x channels x points), once window by window (how a training
script usually loops) and once vectorized over all windows (numpy at its best).
Prints JSON {seconds, vectorized_seconds, checksum, vectorized_checksum}."""
import json
import sys
import time

import numpy as np

path, n_win, n_ch, n_pts, rate = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5])
data = np.fromfile(path, dtype="<f8").reshape(n_win, n_ch, n_pts)
hann = np.hanning(n_pts)
freqs = np.arange(n_pts // 2 + 1) * rate / n_pts
band = (freqs >= 0.5) & (freqs < 5.0)
t = np.arange(n_pts) / rate
tc = t - t.mean()


def features(w):
    temp, vib, cur = w[0], w[1], w[2]
    d = vib - vib.mean()
    m2 = (d * d).mean()
    rms = np.sqrt((vib * vib).mean())
    spec = np.fft.rfft((vib - vib.mean()) * hann)
    dc = cur - cur.mean()
    m2c = (dc * dc).mean()
    return [
        temp.mean(),
        (tc * (temp - temp.mean())).sum() / (tc * tc).sum(),
        temp.std(),
        np.quantile(temp, 0.9),
        rms,
        (d ** 4).mean() / (m2 * m2) - 3 if m2 else 0.0,
        np.abs(vib).max() / rms if rms else 0.0,
        (np.abs(spec[band]) ** 2).sum() / n_pts,
        cur.mean(),
        cur.max() - cur.min(),
        np.count_nonzero(np.diff(dc >= 0)) / (n_pts - 1),
        (dc ** 3).mean() / m2c ** 1.5 if m2c else 0.0,
    ]


def vectorized(d):
    """All windows at once (axis=1): numpy at its best."""
    temp, vib, cur = d[:, 0, :], d[:, 1, :], d[:, 2, :]
    tm = temp.mean(axis=1, keepdims=True)
    dv = vib - vib.mean(axis=1, keepdims=True)
    m2 = (dv * dv).mean(axis=1)
    rms = np.sqrt((vib * vib).mean(axis=1))
    spec = np.fft.rfft(dv * hann, axis=1)
    dc = cur - cur.mean(axis=1, keepdims=True)
    m2c = (dc * dc).mean(axis=1)
    cols = [
        tm[:, 0],
        ((temp - tm) * tc).sum(axis=1) / (tc * tc).sum(),
        temp.std(axis=1),
        np.quantile(temp, 0.9, axis=1),
        rms,
        np.where(m2 > 0, (dv ** 4).mean(axis=1) / np.where(m2 > 0, m2 * m2, 1) - 3, 0.0),
        np.where(rms > 0, np.abs(vib).max(axis=1) / np.where(rms > 0, rms, 1), 0.0),
        (np.abs(spec[:, band]) ** 2).sum(axis=1) / n_pts,
        cur.mean(axis=1),
        cur.max(axis=1) - cur.min(axis=1),
        np.count_nonzero(np.diff(dc >= 0, axis=1), axis=1) / (n_pts - 1),
        np.where(m2c > 0, (dc ** 3).mean(axis=1) / np.where(m2c > 0, m2c, 1) ** 1.5, 0.0),
    ]
    return np.stack(cols, axis=1)


def best_of(f, n=3):
    best, out = None, None
    for _ in range(n):
        t0 = time.perf_counter()
        out = f()
        dt = time.perf_counter() - t0
        best = dt if best is None else min(best, dt)
    return best, out


features(data[0])
loop_s, out = best_of(lambda: [features(w) for w in data])
vec_s, vout = best_of(lambda: vectorized(data))
print(json.dumps({"seconds": loop_s, "vectorized_seconds": vec_s,
                  "checksum": float(np.sum(out)), "vectorized_checksum": float(np.sum(vout))}))
