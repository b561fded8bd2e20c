//! CPU references for every op, one file per op (named as the op): plain Rust, f64
//! accumulation, written from the definitions rather than from the kernels. Inputs are f32
//! (already rounded to f16 where the f16 path is tested); outputs are f64.

pub mod activation;
pub mod add;
pub mod argmax;
pub mod attention;
pub mod cross_entropy;
pub mod distill_loss;
pub mod distill_topk;
pub mod dropout;
pub mod embedding;
pub mod finite_difference;
pub mod gate;
pub mod hidden_mse;
pub mod matmul;
pub mod matmul_dense;
pub mod optim;
pub mod rms_norm;
pub mod rope;
pub mod sampling;
pub mod softmax;
pub mod topk;

pub use activation::{activation, gated_activation};
pub use add::add;
pub use argmax::argmax;
pub use attention::{attention, AttentionSpec, StreamingSpec};
pub use embedding::embedding;
pub use matmul::{matmul, matmul_transposed};
pub use rms_norm::rms_norm;
pub use rope::rope;
pub use softmax::softmax;
pub use topk::topk;
