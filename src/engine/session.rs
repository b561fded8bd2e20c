//! A conversation's KV cache: which tokens it holds, feeding new ones in prefill chunks,
//! rolling back to an earlier position, and reusing the longest common prefix when the next
//! prompt (a chat's next turn) starts with what is already cached.

use std::ops::Deref;
use std::sync::Arc;

use crate::error::{PupilError, Result};
use crate::gpu::{GpuContext, Tensor};
use crate::model::{LlamaModel, Logits, Overflow};
use crate::ops::attention::KvCache;

/// The model a session runs: borrowed (the CLI, tests), or shared so the session can live
/// apart from whoever loaded the model (the browser engine keeps both in one object).
enum ModelRef<'m> {
    Borrowed(&'m LlamaModel),
    Shared(Arc<LlamaModel>),
}

impl Deref for ModelRef<'_> {
    type Target = LlamaModel;
    fn deref(&self) -> &LlamaModel {
        match self {
            ModelRef::Borrowed(m) => m,
            ModelRef::Shared(m) => m,
        }
    }
}

pub struct Session<'m> {
    model: ModelRef<'m>,
    cache: KvCache,
    /// Tokens whose keys and values are in the cache, in order (position = index).
    tokens: Vec<u32>,
    /// Whether the model's logits are those of `tokens.last()` (no other forward since).
    fresh_logits: bool,
}

impl<'m> Session<'m> {
    pub fn new(ctx: &GpuContext, model: &'m LlamaModel) -> Result<Session<'m>> {
        Self::with(ctx, ModelRef::Borrowed(model))
    }

    /// A session sharing ownership of `model` (it lives until the last owner drops it).
    pub fn shared(ctx: &GpuContext, model: Arc<LlamaModel>) -> Result<Session<'static>> {
        Session::with(ctx, ModelRef::Shared(model))
    }

    fn with(ctx: &GpuContext, model: ModelRef<'m>) -> Result<Session<'m>> {
        let cache = model.new_cache(ctx, 1)?;
        Ok(Session { model, cache, tokens: Vec::new(), fresh_logits: false })
    }

    pub fn model(&self) -> &LlamaModel {
        &self.model
    }

    /// Tokens held (the next position).
    pub fn len(&self) -> usize {
        self.tokens.len()
    }
    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }
    pub fn tokens(&self) -> &[u32] {
        &self.tokens
    }
    /// Positions left before the context is full (unbounded with a streaming cache).
    pub fn remaining(&self) -> usize {
        match self.model.overflow {
            Overflow::Error => self.model.context - self.tokens.len(),
            Overflow::Streaming { .. } => usize::MAX - self.tokens.len(),
        }
    }

    /// Whether the cache can return to `len` tokens: always with a full cache (it keeps every
    /// key); with a streaming cache only before it wrapped, or to within the sink tokens
    /// (once recent slots are overwritten, the keys an earlier position needs are gone); with
    /// rolling sliding-window layers (gemma3) by at most their margin past the window.
    pub fn can_rollback(&self, len: usize) -> bool {
        let held = self.tokens.len();
        match self.model.overflow {
            Overflow::Error => len == held || (len < held && self.model.rolling_layers_allow_rollback(held, len)),
            Overflow::Streaming { sink_tokens } => {
                len == held || (len < held && (held <= self.model.context || len <= sink_tokens))
            }
        }
    }

    /// Forget every position from `len` on (a full cache keeps the earlier keys, so this is
    /// free). The next call must feed at least one token before logits are read.
    pub fn rollback(&mut self, len: usize) -> Result<()> {
        if !self.can_rollback(len) {
            return Err(PupilError::arg(
                "Session::rollback",
                format!(
                    "cannot return to position {len} of {} tokens held (past the end, or a wrapped rolling/streaming cache)",
                    self.tokens.len()
                ),
            ));
        }
        if len < self.tokens.len() {
            self.tokens.truncate(len);
            self.fresh_logits = false;
        }
        Ok(())
    }

    /// Run `ids` after the tokens held, in chunks; afterwards [`logits`](Self::logits) are the
    /// last token's. Checked against the context before anything runs.
    pub fn feed(&mut self, ctx: &GpuContext, ids: &[u32]) -> Result<()> {
        if ids.is_empty() {
            return Ok(());
        }
        let needed = self.tokens.len() + ids.len();
        if needed > self.model.context && self.model.overflow == Overflow::Error {
            return Err(PupilError::ContextOverflow { needed, context: self.model.context });
        }
        if ids.len() == 1 && !self.tokens.is_empty() {
            // One token: the decode path (GEMV, split-K attention).
            self.model.decode(ctx, &self.cache, &[(0, self.tokens.len(), ids[0])])?;
        } else {
            for chunk in ids.chunks(self.model.chunk) {
                self.model.forward(ctx, &self.cache, 0, self.tokens.len(), chunk, Logits::Last)?;
                self.tokens.extend_from_slice(chunk);
            }
            self.fresh_logits = true;
            return Ok(());
        }
        self.tokens.extend_from_slice(ids);
        self.fresh_logits = true;
        Ok(())
    }

    /// Run `ids` after the tokens held in one forward pass (at most the model's prefill chunk)
    /// and return every one's logits `[ids.len(), vocab]`: what the model would pick after
    /// each (speculative decoding's verification). [`logits`](Self::logits) needs a feed
    /// after it.
    pub fn feed_scored(&mut self, ctx: &GpuContext, ids: &[u32]) -> Result<Tensor> {
        if ids.is_empty() || ids.len() > self.model.chunk {
            return Err(PupilError::arg(
                "Session::feed_scored",
                format!("1..={} tokens per pass, got {}", self.model.chunk, ids.len()),
            ));
        }
        let needed = self.tokens.len() + ids.len();
        if needed > self.model.context && self.model.overflow == Overflow::Error {
            return Err(PupilError::ContextOverflow { needed, context: self.model.context });
        }
        self.model.forward(ctx, &self.cache, 0, self.tokens.len(), ids, Logits::All)?;
        self.tokens.extend_from_slice(ids);
        self.fresh_logits = false;
        self.model.logits(ids.len())
    }

    /// Make the cache hold exactly `prompt`, keeping the longest prefix already cached and
    /// recomputing at least its last token (so fresh logits exist). Returns the number of
    /// cached tokens reused.
    pub fn set_prompt(&mut self, ctx: &GpuContext, prompt: &[u32]) -> Result<usize> {
        if prompt.is_empty() {
            return Err(PupilError::arg("Session::set_prompt", "the prompt is empty"));
        }
        if prompt.len() > self.model.context && self.model.overflow == Overflow::Error {
            return Err(PupilError::ContextOverflow { needed: prompt.len(), context: self.model.context });
        }
        let common = self.tokens.iter().zip(prompt).take_while(|(a, b)| a == b).count();
        let mut reuse = common.min(prompt.len() - 1);
        if !self.can_rollback(reuse) {
            reuse = 0; // a wrapped rolling or streaming cache: start over
        }
        self.rollback(reuse)?;
        self.feed(ctx, &prompt[reuse..])?;
        Ok(reuse)
    }

    /// Logits `[1, vocab]` of the last token fed.
    pub fn logits(&self) -> Result<Tensor> {
        if !self.fresh_logits {
            return Err(PupilError::arg("Session::logits", "no token has been fed since the last rollback"));
        }
        self.model.logits(1)
    }
}
