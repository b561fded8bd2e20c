//! Model files and architectures. So far: the GGUF container (`gguf`).

pub mod gguf;
