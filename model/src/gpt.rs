//! A GPT-style byte-level decoder: token and position embeddings, pre-norm blocks of causal
//! multi-head attention and a GELU MLP, a final norm and an output head (own or tied).
//!
//! No backend type parameter: the tensors' `Device` picks wgpu or the CPU backend at run time.

use burn::module::{Initializer, Param};
use burn::nn::{
    Embedding, EmbeddingConfig, Gelu, LayerNorm, LayerNormConfig, Linear, LinearConfig,
};
use burn::prelude::*;
use burn::tensor::module::attention;
use burn::tensor::ops::AttentionModuleOptions;

use crate::config::{ModelConfig, VOCAB};

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
    fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let [b, t, d] = x.dims();
        let hd = d / self.heads;
        let qkv = self.qkv.forward(x);
        let split = |i: usize| {
            qkv.clone()
                .slice([0..b, 0..t, i * d..(i + 1) * d])
                .reshape([b, t, self.heads, hd])
                .swap_dims(1, 2)
        };
        let options = AttentionModuleOptions {
            scale: None,
            softcap: None,
            is_causal: true,
        };
        let y = attention(split(0), split(1), split(2), None, None, options);
        self.proj.forward(y.swap_dims(1, 2).reshape([b, t, d]))
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
    act: Gelu,
}

impl Block {
    fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let x = x.clone() + self.attn.forward(self.norm1.forward(x));
        let h = self.mlp_out.forward(
            self.act
                .forward(self.mlp_in.forward(self.norm2.forward(x.clone()))),
        );
        x + h
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
                act: Gelu::new(),
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
        let [_, t] = ids.dims();
        let d = self.position_embedding.dims()[1];
        let pos = self
            .position_embedding
            .val()
            .slice([0..t, 0..d])
            .unsqueeze::<3>();
        let mut x = self.token_embedding.forward(ids) + pos;
        for block in &self.blocks {
            x = block.forward(x);
        }
        let x = self.final_norm.forward(x);
        match &self.head {
            Some(head) => head.forward(x),
            None => x.matmul(
                self.token_embedding
                    .weight
                    .val()
                    .transpose()
                    .unsqueeze::<3>(),
            ),
        }
    }

    /// Mean cross-entropy in nats per byte of predicting `targets` from `ids` (both `[batch, time]`).
    pub fn loss(&self, ids: Tensor<2, Int>, targets: Tensor<2, Int>) -> Tensor<1> {
        let logits = self.forward(ids);
        let [b, t, v] = logits.dims();
        let logp = burn::tensor::activation::log_softmax(logits.reshape([b * t, v]), 1);
        let picked = logp.gather(1, targets.reshape([b * t, 1]));
        picked.mean().neg()
    }

    /// The context length this model was built for.
    pub fn context(&self) -> usize {
        self.context
    }
}
