//! A GPT-style byte-level decoder: token and position embeddings, pre-norm blocks of causal
//! multi-head attention and an MLP (ReLU² by default, or GELU; see `Activation`), a final norm and
//! an output head (own or tied).
//!
//! No backend type parameter: the tensors' `Device` picks wgpu or the CPU backend at run time.

use burn::module::{Initializer, Param};
use burn::nn::{Embedding, EmbeddingConfig, LayerNorm, LayerNormConfig, Linear, LinearConfig};
use burn::prelude::*;

use crate::config::{Activation, ModelConfig, VOCAB};

/// Causal self-attention with one fused QKV projection.
#[derive(Module, Debug)]
pub struct CausalSelfAttention {
    /// Projects `d_model` to queries, keys and values at once (`[d_model, 3·d_model]`).
    pub qkv: Linear,
    /// Projects the heads' concatenated outputs back to `d_model`.
    pub proj: Linear,
    heads: usize,
}

impl CausalSelfAttention {
    /// `x` is the residual stream flattened to `[batch·time, d_model]`.
    fn forward(&self, x: Tensor<2>, mask: &Tensor<4>, b: usize, t: usize) -> Tensor<2> {
        let [_, d] = x.dims();
        let hd = d / self.heads;
        let qkv = self.qkv.forward(x);
        let split = |i: usize| {
            qkv.clone()
                .slice([0..b * t, i * d..(i + 1) * d])
                .reshape([b, t, self.heads, hd])
                .swap_dims(1, 2)
        };
        // Causal softmax(q·kᵀ/√hd)·v written out: burn's autodiff runs `attention` as a generic
        // decomposition that rebuilds the mask and tracks a max with indices each call, and its
        // softmax divides (a costly backward); here the mask is one untracked additive bias,
        // the max is detached, and the normaliser multiplies by a reciprocal.
        let scale = (hd as f64).powf(-0.5);
        let scores = split(0).mul_scalar(scale).matmul(split(1).swap_dims(2, 3)) + mask.clone();
        let top = scores.clone().detach().max_dim(3);
        let e = (scores - top).exp();
        let y = (e.clone() * e.sum_dim(3).recip()).matmul(split(2));
        self.proj.forward(y.swap_dims(1, 2).reshape([b * t, d]))
    }
}

/// One pre-norm transformer block.
#[derive(Module, Debug)]
pub struct Block {
    /// Norm before attention.
    pub norm1: LayerNorm,
    /// Attention.
    pub attn: CausalSelfAttention,
    /// Norm before the MLP.
    pub norm2: LayerNorm,
    /// MLP expansion.
    pub mlp_in: Linear,
    /// MLP projection.
    pub mlp_out: Linear,
    /// ReLU² rather than exact GELU ([`Activation`]).
    relu2: bool,
}

impl Block {
    fn forward(&self, x: Tensor<2>, mask: &Tensor<4>, b: usize, t: usize) -> Tensor<2> {
        let x = x.clone() + self.attn.forward(self.norm1.forward(x), mask, b, t);
        let h = self.mlp_in.forward(self.norm2.forward(x.clone()));
        let h = if self.relu2 {
            burn::tensor::activation::relu(h).square()
        } else {
            burn::tensor::activation::gelu(h)
        };
        x + self.mlp_out.forward(h)
    }
}

/// The language model.
#[derive(Module, Debug)]
pub struct Gpt {
    /// Byte embeddings `[256, d_model]`.
    pub token_embedding: Embedding,
    /// Learned positions `[context, d_model]`.
    pub position_embedding: Param<Tensor<2>>,
    /// The blocks.
    pub blocks: Vec<Block>,
    /// Final norm.
    pub final_norm: LayerNorm,
    /// Output head `[d_model, 256]`, absent when tied to the token embedding.
    pub head: Option<Linear>,
    context: usize,
}

impl Gpt {
    /// The model's structure on `device`, every parameter zero: θ₀ comes from
    /// [`crate::params::initial`], which every peer computes alike ([`crate::Trainer::new`] does).
    pub fn new(config: &ModelConfig, device: &Device) -> Self {
        let d = config.d_model;
        let zeros = Initializer::Zeros;
        let linear = |i: usize, o: usize| {
            LinearConfig::new(i, o)
                .with_initializer(zeros.clone())
                .init(device)
        };
        let blocks = (0..config.layers)
            .map(|_| Block {
                norm1: LayerNormConfig::new(d).init(device),
                attn: CausalSelfAttention {
                    qkv: linear(d, 3 * d),
                    proj: linear(d, d),
                    heads: config.heads,
                },
                norm2: LayerNormConfig::new(d).init(device),
                mlp_in: linear(d, config.mlp_ratio * d),
                mlp_out: linear(config.mlp_ratio * d, d),
                relu2: config.activation == Activation::Relu2,
            })
            .collect();
        Self {
            token_embedding: EmbeddingConfig::new(VOCAB, d)
                .with_initializer(zeros.clone())
                .init(device),
            position_embedding: zeros.init([config.context, d], device),
            blocks,
            final_norm: LayerNormConfig::new(d).init(device),
            head: (!config.tied_head).then(|| {
                LinearConfig::new(d, VOCAB)
                    .with_bias(false)
                    .with_initializer(zeros.clone())
                    .init(device)
            }),
            context: config.context,
        }
    }

    /// Logits `[batch, time, 256]` for byte ids `[batch, time]` (time ≤ context).
    pub fn forward(&self, ids: Tensor<2, Int>) -> Tensor<3> {
        let [b, t] = ids.dims();
        self.logits(ids).reshape([b, t, VOCAB])
    }

    /// Logits `[batch·time, 256]`. The residual stream stays flattened to `[batch·time, d_model]`
    /// so that every linear layer is one 2-D matmul: on `[batch, time, d]` burn runs one small
    /// matmul per sequence, repacking the weight each time.
    fn logits(&self, ids: Tensor<2, Int>) -> Tensor<2> {
        let [b, t] = ids.dims();
        let d = self.position_embedding.dims()[1];
        let pos = self
            .position_embedding
            .val()
            .slice([0..t, 0..d])
            .unsqueeze::<3>();
        let mut x = (self.token_embedding.forward(ids) + pos).reshape([b * t, d]);
        // −∞ above the diagonal: a position attends to itself and the positions before it.
        let device = x.device();
        let mask = Tensor::<2>::zeros([t, t], &device)
            .mask_fill(
                Tensor::<2, Bool>::tril_mask([t, t], 0, &device),
                f32::NEG_INFINITY,
            )
            .unsqueeze::<4>();
        for block in &self.blocks {
            x = block.forward(x, &mask, b, t);
        }
        let x = self.final_norm.forward(x);
        match &self.head {
            Some(head) => head.forward(x),
            None => x.matmul(self.token_embedding.weight.val().transpose()),
        }
    }

    /// Mean cross-entropy in nats per byte of predicting `targets` from `ids` (both `[batch, time]`).
    pub fn loss(&self, ids: Tensor<2, Int>, targets: Tensor<2, Int>) -> Tensor<1> {
        let [b, t] = ids.dims();
        let logp = burn::tensor::activation::log_softmax(self.logits(ids), 1);
        let picked = logp.gather(1, targets.reshape([b * t, 1]));
        picked.mean().neg()
    }

    /// The context length this model was built for.
    pub fn context(&self) -> usize {
        self.context
    }
}
