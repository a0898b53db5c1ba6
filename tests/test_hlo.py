"""llada_jax.parallel.hlo: the collectives of a compiled program, counted and sized."""

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec

from llada_jax.parallel import hlo, sharding


def test_collectives_of_a_shard_map_with_one_of_each():
  mesh = sharding.make_mesh((8,), ("x",))
  n = mesh.shape["x"]

  def body(a, b):
    gathered = jax.lax.all_gather(a, "x", tiled=True)  # f32[8, 4] → f32[64, 4]
    summed = jax.lax.psum(b, "x")  # f32[16, 4]
    scattered = jax.lax.psum_scatter(b, "x", tiled=True)  # f32[16, 4] → f32[2, 4]
    swapped = jax.lax.all_to_all(a, "x", 0, 0, tiled=True)
    shifted = jax.lax.ppermute(a, "x", [(i, (i + 1) % n) for i in range(n)])
    return gathered.sum() + summed.sum() + scattered.sum() + swapped.sum() + shifted.sum()

  fn = jax.jit(jax.shard_map(body, mesh=mesh, in_specs=(PartitionSpec("x"), PartitionSpec()),
                             out_specs=PartitionSpec(), check_vma=False),
               in_shardings=(NamedSharding(mesh, PartitionSpec("x")),
                             NamedSharding(mesh, PartitionSpec())))
  text = fn.lower(jax.ShapeDtypeStruct((64, 4), jnp.float32),
                  jax.ShapeDtypeStruct((16, 4), jnp.float32)).compile().as_text()
  found = hlo.collectives(text)
  got = hlo.summary(found)
  assert {k: v["count"] for k, v in got.items()} == dict.fromkeys(hlo.KINDS, 1)
  assert got["all-gather"] == {"count": 1, "result_bytes": 64 * 4 * 4, "operand_bytes": 8 * 4 * 4}
  assert got["all-reduce"]["result_bytes"] == 16 * 4 * 4
  assert got["reduce-scatter"] == {"count": 1, "result_bytes": 2 * 4 * 4,
                                   "operand_bytes": 16 * 4 * 4}
  assert got["all-to-all"]["result_bytes"] == got["all-to-all"]["operand_bytes"] == 8 * 4 * 4
  assert got["collective-permute"]["result_bytes"] == 8 * 4 * 4
  gather = next(c for c in found if c.kind == "all-gather")
  assert gather.result == (("f32", (64, 4)),)


def test_async_pairs_and_tuples_count_once():
  text = """
  ENTRY %main (p: bf16[2,3]) -> bf16[16,3] {
    %p = bf16[2,3]{1,0} parameter(0)
    %ags = (bf16[2,3]{1,0}, bf16[16,3]{1,0}) all-gather-start(%p), dimensions={0}
    %agd = bf16[16,3]{1,0} all-gather-done(%ags)
    %ar = (f32[4]{0}, /*index=1*/s32[2,2]{1,0}) all-reduce(%x, %y), to_apply=%add
    ROOT %t = token[] after-all()
  }"""
  got = hlo.summary(hlo.collectives(text))
  assert got["all-gather"] == {"count": 1, "result_bytes": 16 * 3 * 2, "operand_bytes": 2 * 3 * 2}
  assert got["all-reduce"]["count"] == 1 and got["all-reduce"]["result_bytes"] == 16 + 16
  assert got["reduce-scatter"]["count"] == 0
