//! Print a GGUF file's metadata (arrays abbreviated) and tensor directory.
//!   cargo run --release --example gguf_info -- FILE
use pupil::model::gguf::{parse_header, Value};
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let path = std::env::args().nth(1).ok_or("usage: gguf_info FILE")?;
    let bytes = std::fs::read(&path)?;
    let h = parse_header(&bytes)?;
    println!("GGUF v{} alignment {} data at {} ({} tensors)", h.version, h.alignment, h.data_offset, h.tensors.len());
    for (k, v) in &h.metadata {
        match v {
            Value::Array(a) => println!("{k} = [{} items] {:?}", a.len(), &a[..a.len().min(3)]),
            Value::String(s) if s.len() > 80 => {
                println!("{k} = {:?}... ({} bytes)", &s[..s.char_indices().nth(80).map_or(s.len(), |c| c.0)], s.len())
            }
            v => println!("{k} = {v:?}"),
        }
    }
    for t in &h.tensors {
        println!("{:<28} {:<5} {:?}", t.name, t.ty.name(), t.dims);
    }
    Ok(())
}
