"""
=========================================
Fitting data beyond memory with Dask
=========================================

Surrogates of simulations and measured device data can hold more rows than
one machine's memory. Stored in chunks (Zarr, HDF5, Parquet) and opened as
Dask arrays, they are fitted as they are: ``fit`` accepts Dask arrays
chunked along rows and never gathers them. It reads the chunks a few times:
once to check them and find the input and target scaling, once to draw the
EM subsample (``em_subsample`` rows, brought into memory, where the
V-cycles place the partitions), and once for each pass that sums over all
rows (the finest experts' refit, the polish, the noise). Each pass maps a
function over the chunks and adds the small partial sums in a tree, on
whichever Dask scheduler is active: here a ``distributed.LocalCluster``.

The fitted model is the usual small in-memory estimator: it pickles, and
predicts NumPy arrays as before; on a Dask array ``predict`` returns a lazy
Dask array, computed chunk by chunk.

The data: a smooth step whose edge bends across the input square (the
kind of surface a device's response makes), with noise, written chunk by
chunk to a Zarr store in a temporary folder.
"""

# %%
import os
import pickle
import tempfile

import dask
import dask.array as da
import matplotlib.pyplot as plt
import numpy as np
from distributed import Client, LocalCluster

from skpou import HierarchicalPOURegressor

QUICK = os.environ.get("SKPOU_EXAMPLES_QUICK") == "1"
N_ROWS = 300_000 if QUICK else 4_000_000
CHUNK_ROWS = 50_000 if QUICK else 500_000


def response(X):
    edge = 0.5 + 0.2 * np.sin(2 * np.pi * X[:, 0])
    return np.tanh(4.0 * (X[:, 1] - edge))


# %%
# Write the store
# ---------------
# Dask generates the rows chunk by chunk (seeded, so every run writes the
# same data) and ``to_zarr`` writes each chunk as it is made: the data set
# is never in memory as a whole.
folder = tempfile.TemporaryDirectory(prefix="skpou-example-")
store = os.path.join(folder.name, "device.zarr")
rng = da.random.default_rng(0)
X = rng.uniform(size=(N_ROWS, 2), chunks=(CHUNK_ROWS, 2))
noise = rng.normal(scale=0.01, size=N_ROWS, chunks=CHUNK_ROWS)
y = X.map_blocks(response, drop_axis=1, dtype=float) + noise
dask.compute(
    da.to_zarr(X, store, component="X", compute=False),
    da.to_zarr(y, store, component="y", compute=False),
)

# %%
# Fit on a LocalCluster
# ---------------------
# Two workers; ``processes=False`` keeps them in this process, which is
# quickest for a small example. On a real data set use worker processes
# (the default) or a cluster's scheduler address: nothing else changes.
cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=False,
                       dashboard_address=None)
client = Client(cluster)

X_disk = da.from_zarr(store, component="X")
y_disk = da.from_zarr(store, component="y")
print(f"X: {X_disk.shape}, {X_disk.numblocks[0]} chunks of {CHUNK_ROWS:,} rows, "
      f"{X_disk.nbytes / 2**20:.0f} MiB on disk")

model = HierarchicalPOURegressor(partitions=(4, 4), random_state=0)
model.fit(X_disk, y_disk)
print(f"EM on {model.em_subsample:,} of {N_ROWS:,} rows, {model.n_iter_} V-cycles; "
      f"pickled model: {len(pickle.dumps(model)) / 1024:.0f} KiB")

# %%
# Predict
# -------
# On Dask input the prediction is lazy: a Dask array with the input's
# chunks. Here it is the residual on the last chunk of the store, and the
# surface on a grid (a NumPy array, predicted as always).
last = slice((X_disk.numblocks[0] - 1) * CHUNK_ROWS, N_ROWS)
y_pred = model.predict(X_disk[last])
print(f"lazy prediction: {type(y_pred).__name__}, chunks {y_pred.chunks}")
residual = (y_pred - y_disk[last]).compute()
print(f"RMS residual on the last chunk: {np.sqrt(np.mean(residual ** 2)):.4f} "
      "(noise: 0.0100)")

grid = np.linspace(0, 1, 120)
G0, G1 = np.meshgrid(grid, grid)
X_grid = np.column_stack([G0.ravel(), G1.ravel()])
surface = model.predict(X_grid).reshape(G0.shape)
error = np.abs(surface - response(X_grid).reshape(G0.shape))

client.close()
cluster.close()
folder.cleanup()

# %%
fig, ax = plt.subplots(1, 3, figsize=(12, 3.6))
image = ax[0].pcolormesh(G0, G1, surface, shading="auto", cmap="viridis")
fig.colorbar(image, ax=ax[0])
ax[0].set_title("fitted surface")
image = ax[1].pcolormesh(G0, G1, np.log10(error + 1e-12), shading="auto", cmap="magma")
fig.colorbar(image, ax=ax[1])
ax[1].set_title("log10 |error| (noise-free target)")
ax[2].hist(residual, bins=60, color="0.4")
ax[2].set_title("residuals, last chunk of the store")
ax[2].set_xlabel("y_pred - y")
for axis in ax[:2]:
    axis.set_xlabel("x0")
    axis.set_ylabel("x1")
fig.tight_layout()
plt.show()
