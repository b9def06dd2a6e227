//! The model's parameters as one flat f32 vector, in a fixed, documented order.
//!
//! Order: the module tree depth first, fields in declaration order (burn's derive visits them so):
//! `token_embedding.weight`, `position_embedding`, then per block `blocks.{i}.norm1.{gamma,beta}`,
//! `blocks.{i}.attn.qkv.{weight,bias}`, `blocks.{i}.attn.proj.{weight,bias}`,
//! `blocks.{i}.norm2.{gamma,beta}`, `blocks.{i}.mlp_in.{weight,bias}`,
//! `blocks.{i}.mlp_out.{weight,bias}`, then `final_norm.{gamma,beta}` and `head.weight` (untied
//! heads only). Each tensor is row-major; linear weights are `[d_in, d_out]` (burn's layout, the
//! transpose of PyTorch's). The names are the checkpoint's tensor names.

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use burn::prelude::*;
use burn::tensor::Transaction;

use gradswarm_core::codec::rng::splitmix64;
use gradswarm_core::synthetic::SplitMix;

use crate::config::ModelConfig;
use crate::error::ModelError;
use crate::gpt::Gpt;
use crate::readback;

/// Where one parameter tensor sits in the flat vector.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParamSpec {
    /// Dotted module path, e.g. `blocks.0.attn.qkv.weight`.
    pub name: String,
    /// Tensor shape.
    pub shape: Vec<usize>,
    /// Offset of its first value in the flat vector.
    pub offset: usize,
}

impl ParamSpec {
    /// Number of values.
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }

    /// Whether the tensor has no values.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Tracks the dotted path while burn walks the module tree.
#[derive(Default)]
pub(crate) struct PathTracker(Vec<String>);

impl PathTracker {
    pub(crate) fn enter(&mut self, name: &str) {
        self.0.push(name.to_string());
    }
    pub(crate) fn exit(&mut self) {
        self.0.pop();
    }
    pub(crate) fn name(&self) -> String {
        self.0.join(".")
    }
}

struct Layout {
    path: PathTracker,
    specs: Vec<ParamSpec>,
    total: usize,
}

impl ModuleVisitor for Layout {
    fn enter_module(&mut self, name: &str, _: &str) {
        self.path.enter(name);
    }
    fn exit_module(&mut self, _: &str, _: &str) {
        self.path.exit();
    }
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let shape = param.val().dims().to_vec();
        let spec = ParamSpec {
            name: self.path.name(),
            shape,
            offset: self.total,
        };
        self.total += spec.len();
        self.specs.push(spec);
    }
}

/// The flat layout of `model`'s parameters.
pub fn layout(model: &Gpt) -> Vec<ParamSpec> {
    let mut v = Layout {
        path: PathTracker::default(),
        specs: Vec::new(),
        total: 0,
    };
    model.visit(&mut v);
    v.specs
}

struct Reader {
    tx: Option<Transaction>,
    count: usize,
}

impl ModuleVisitor for Reader {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        self.tx = self.tx.take().map(|tx| tx.register(param.val()));
        self.count += 1;
    }
}

/// One read of every parameter (see the module docs for the order), and how many tensors it
/// holds: execute it with [`crate::readback`] and concatenate.
pub(crate) fn read_all(model: &Gpt) -> (Transaction, usize) {
    let mut r = Reader {
        tx: Some(Transaction::default()),
        count: 0,
    };
    model.visit(&mut r);
    (r.tx.unwrap_or_default(), r.count)
}

/// Reads every parameter into one flat vector (see the module docs for the order).
pub fn to_flat(model: &Gpt) -> Result<Vec<f32>, ModelError> {
    let (tx, n) = read_all(model);
    readback::concat(readback::execute(tx)?, n)
}

/// [`to_flat`] without blocking (the browser's WebGPU cannot block on a read).
pub async fn to_flat_async(model: &Gpt) -> Result<Vec<f32>, ModelError> {
    let (tx, n) = read_all(model);
    readback::concat(readback::execute_async(tx).await?, n)
}

struct Writer<'a> {
    src: &'a [f32],
    offset: usize,
}

impl ModuleMapper for Writer<'_> {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        param.map(|t| {
            let shape = t.shape();
            let n = shape.num_elements();
            let (device, dtype, grad) = (t.device(), t.dtype(), t.is_require_grad());
            let data = TensorData::new(self.src[self.offset..self.offset + n].to_vec(), shape);
            self.offset += n;
            let fresh = Tensor::<D>::from_data(data, (&device, dtype));
            if grad { fresh.require_grad() } else { fresh }
        })
    }
}

/// Replaces every parameter with the values of `flat` (same order and length as [`to_flat`]).
pub fn from_flat(model: Gpt, flat: &[f32]) -> Result<Gpt, ModelError> {
    let expected = model.num_params();
    if flat.len() != expected {
        return Err(ModelError::ParamLength {
            got: flat.len(),
            expected,
        });
    }
    Ok(model.map(&mut Writer {
        src: flat,
        offset: 0,
    }))
}

/// The initial parameters of a run, as one flat vector: the same bits on every peer, every
/// platform (native or wasm) and every thread, for a given `seed`.
///
/// Why not burn's initializers: they draw from the device's RNG, which is process-global (two
/// trainers built at once interleave their draws), and swarm peers must start from identical θ.
/// Each tensor draws from its own SplitMix64 stream keyed by (seed, name), and normals are
/// Irwin–Hall sums of 12 uniforms (mean 0, variance 1, tails cut at ±6): additions of exact dyadic
/// numbers only, so no `ln`/`cos` whose last bit could differ between libms.
///
/// GPT-2 scheme: weights N(0, 0.02), positions N(0, 0.01), the residual output projections
/// (`attn.proj`, `mlp_out`) N(0, 0.02/√(2·layers)) so the residual stream does not grow with
/// depth; norm gains 1; norm shifts and biases 0.
pub fn initial(config: &ModelConfig, specs: &[ParamSpec], seed: u64) -> Vec<f32> {
    let total = specs.iter().map(ParamSpec::len).sum();
    let mut out = Vec::with_capacity(total);
    let residual_std = 0.02 / (2.0 * config.layers as f64).sqrt();
    for spec in specs {
        let name = spec.name.as_str();
        let n = spec.len();
        if name.ends_with(".gamma") {
            out.extend(std::iter::repeat_n(1.0f32, n));
        } else if name.ends_with(".beta") || name.ends_with(".bias") {
            out.extend(std::iter::repeat_n(0.0f32, n));
        } else {
            let std = if name == "position_embedding" {
                0.01
            } else if name.ends_with("attn.proj.weight") || name.ends_with("mlp_out.weight") {
                residual_std
            } else {
                0.02
            };
            let mut rng = SplitMix::new(splitmix64(seed ^ name_key(name)));
            out.extend((0..n).map(|_| (irwin_hall_normal(&mut rng) * std) as f32));
        }
    }
    out
}

/// A 64-bit key of a parameter name (FNV-1a), fixed across platforms and Rust versions.
fn name_key(name: &str) -> u64 {
    name.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// An approximately standard normal draw from 12 uniforms (see [`initial`] for why).
fn irwin_hall_normal(rng: &mut SplitMix) -> f64 {
    (0..12).map(|_| rng.uniform()).sum::<f64>() - 6.0
}
