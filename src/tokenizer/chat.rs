//! Chat templates: `tokenizer.chat_template` (Jinja) rendered with minijinja, set up the way
//! transformers sets up jinja2 for `apply_chat_template`:
//!
//! - `trim_blocks` and `lstrip_blocks` on, a single trailing newline dropped;
//! - Python string/dict/list methods (`.strip()`, `.startswith()`, `.items()`, ...) through
//!   minijinja-contrib's pycompat; `{% break %}`/`{% continue %}`; `trim`, `.strip()`,
//!   `.lstrip()`, `.rstrip()` and `.isspace()` with Python's whitespace (U+001C..U+001F
//!   included, which Rust's `trim` keeps);
//! - `raise_exception(msg)` fails the render with `msg`; `strftime_now(fmt)` formats the
//!   current time (UTC here; transformers uses local time) or a pinned one ([`ChatTemplate::with_time`]);
//! - `tojson` is transformers' (`json.dumps(x, ensure_ascii=False, indent=…, separators=…,
//!   sort_keys=…)`: no HTML escaping, `", "`/`": "` separators);
//! - variables: `messages` (list of `{role, content}`), `add_generation_prompt`,
//!   `bos_token`/`eos_token`/`unk_token`/`pad_token` (token text, when the model has the id),
//!   `tools` and `documents` (none), and any extra ones the caller passes
//!   ([`ChatTemplate::render_with`]: Qwen3's `enable_thinking`).
//!
//! Not supported: transformers' `{% generation %}` block (assistant masks for training) — such a
//! template fails to load with a clear error.

use std::borrow::Cow;
use std::fmt::Write as _;
use std::sync::Arc;

use minijinja::value::{Kwargs, Value, ValueKind};
use minijinja::{Environment, Error, ErrorKind};
use serde::{Deserialize, Serialize};

use super::{opt_id, opt_str, str_array};
use crate::error::{PupilError, Result};
use crate::model::gguf::GgufHeader;

/// A value for an extra template variable ([`ChatTemplate::render_with`]): minijinja's `Value`
/// (`Value::from(false)`, `Value::from("text")`, `Value::from_serialize(&x)`).
pub use minijinja::Value as TemplateValue;

/// One chat message (`role` is usually `system`, `user` or `assistant`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
}

impl ChatMessage {
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        ChatMessage { role: role.into(), content: content.into() }
    }
    pub fn system(content: impl Into<String>) -> Self {
        Self::new("system", content)
    }
    pub fn user(content: impl Into<String>) -> Self {
        Self::new("user", content)
    }
    pub fn assistant(content: impl Into<String>) -> Self {
        Self::new("assistant", content)
    }
}

/// transformers' default ChatML template, offered as an explicit fallback
/// ([`ChatTemplate::chatml`]) for models without `tokenizer.chat_template`.
pub const CHATML_TEMPLATE: &str = "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

/// Gemma 3's chat template, as in the `chat_template` of google/gemma-3-*-it's
/// tokenizer_config.json (written here from that file's text; the fixtures check it renders as
/// transformers renders this same source). [`ChatTemplate::from_gguf`] uses it for a Gemma file
/// without `tokenizer.chat_template` (the 270M GGUF has none): `<bos>`, a system message folded
/// into the first user turn after a blank line, `assistant` renamed `model`, contents trimmed,
/// roles must alternate. List contents (`{type: image|text}` parts) are in the template but
/// [`ChatMessage`] only carries text.
pub const GEMMA3_TEMPLATE: &str = "{{ bos_token }}\n{%- if messages[0]['role'] == 'system' -%}\n    {%- if messages[0]['content'] is string -%}\n        {%- set first_user_prefix = messages[0]['content'] + '\n\n' -%}\n    {%- else -%}\n        {%- set first_user_prefix = messages[0]['content'][0]['text'] + '\n\n' -%}\n    {%- endif -%}\n    {%- set loop_messages = messages[1:] -%}\n{%- else -%}\n    {%- set first_user_prefix = \"\" -%}\n    {%- set loop_messages = messages -%}\n{%- endif -%}\n{%- for message in loop_messages -%}\n    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}\n        {{ raise_exception(\"Conversation roles must alternate user/assistant/user/assistant/...\") }}\n    {%- endif -%}\n    {%- if (message['role'] == 'assistant') -%}\n        {%- set role = \"model\" -%}\n    {%- else -%}\n        {%- set role = message['role'] -%}\n    {%- endif -%}\n    {{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else \"\") }}\n    {%- if message['content'] is string -%}\n        {{ message['content'] | trim }}\n    {%- elif message['content'] is iterable -%}\n        {%- for item in message['content'] -%}\n            {%- if item['type'] == 'image' -%}\n                {{ '<start_of_image>' }}\n            {%- elif item['type'] == 'text' -%}\n                {{ item['text'] | trim }}\n            {%- endif -%}\n        {%- endfor -%}\n    {%- else -%}\n        {{ raise_exception(\"Invalid content type\") }}\n    {%- endif -%}\n    {{ '<end_of_turn>\n' }}\n{%- endfor -%}\n{%- if add_generation_prompt -%}\n    {{'<start_of_turn>model\n'}}\n{%- endif -%}\n";

const NAME: &str = "chat_template";

/// Instructions one render may execute. A template comes from the model file, i.e. from
/// anywhere: without a bound, `{% for i in range(9999) %}{% for j in range(9999) %}` hangs the
/// page. Real templates spend tens to hundreds of instructions per message (the tokenizer
/// tests render long conversations well inside this budget).
const TEMPLATE_FUEL: u64 = 5_000_000;

/// A compiled chat template plus the special-token strings it may use.
#[derive(Clone)]
pub struct ChatTemplate {
    env: Environment<'static>,
    source: Arc<str>,
    /// (name, token text) pairs passed to every render: bos_token, eos_token, ...
    tokens: Vec<(&'static str, String)>,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate").field("source", &self.source).field("tokens", &self.tokens).finish()
    }
}

/// A Gemma GGUF: `general.architecture` `gemma`, `gemma2`, `gemma3`, ... or, for files whose
/// architecture says otherwise (fine-tunes, other converters), Gemma's turn tokens.
fn looks_like_gemma(h: &GgufHeader, tokens: &[&str]) -> bool {
    let arch = h.get("general.architecture").and_then(|v| v.as_str());
    arch.is_some_and(|a| a.starts_with("gemma"))
        || (tokens.contains(&"<start_of_turn>") && tokens.contains(&"<end_of_turn>"))
}

fn template_err(what: &str, e: &Error) -> String {
    // minijinja's Display has the kind, the detail and the template line.
    let mut s = format!("{what}: {e}");
    let mut source = std::error::Error::source(e);
    while let Some(inner) = source {
        let _ = write!(s, ": {inner}");
        source = inner.source();
    }
    s
}

impl ChatTemplate {
    /// The model's `tokenizer.chat_template`, with `bos_token`/`eos_token`/`unk_token`/
    /// `pad_token` taken from `tokenizer.ggml.tokens` at the model's ids. A Gemma file without a
    /// template (architecture `gemma*`, or a vocabulary with `<start_of_turn>` and
    /// `<end_of_turn>`) gets [`GEMMA3_TEMPLATE`], the template every Gemma 3 instruct model
    /// ships. Any other model without one is an error (`PupilError::Unsupported`) saying so;
    /// [`ChatTemplate::chatml`] is the fallback a caller may choose explicitly.
    pub fn from_gguf(h: &GgufHeader) -> Result<ChatTemplate> {
        let key = "tokenizer.chat_template";
        let tokens = str_array(h, "tokenizer.ggml.tokens")?;
        let source = match opt_str(h, key)? {
            Some(s) => s,
            None if looks_like_gemma(h, &tokens) => GEMMA3_TEMPLATE,
            None => {
                return Err(PupilError::Unsupported(format!(
                    "this model has no chat template (`{key}` is missing); use ChatTemplate::chatml() to assume ChatML"
                )))
            }
        };
        let mut named = Vec::new();
        for (name, key) in [
            ("bos_token", "tokenizer.ggml.bos_token_id"),
            ("eos_token", "tokenizer.ggml.eos_token_id"),
            ("unk_token", "tokenizer.ggml.unknown_token_id"),
            ("pad_token", "tokenizer.ggml.padding_token_id"),
        ] {
            if let Some(id) = opt_id(h, key, tokens.len())? {
                named.push((name, tokens[id as usize].to_owned()));
            }
        }
        Self::with_tokens(source, named)
    }

    /// A template from source, with `bos_token` and `eos_token` (either may be absent).
    pub fn new(source: &str, bos_token: Option<&str>, eos_token: Option<&str>) -> Result<ChatTemplate> {
        let named = [("bos_token", bos_token), ("eos_token", eos_token)]
            .into_iter()
            .filter_map(|(n, t)| t.map(|t| (n, t.to_owned())))
            .collect();
        Self::with_tokens(source, named)
    }

    /// Gemma 3's template ([`GEMMA3_TEMPLATE`]) with Gemma's `<bos>`.
    pub fn gemma3() -> ChatTemplate {
        Self::new(GEMMA3_TEMPLATE, Some("<bos>"), Some("<eos>")).expect("the Gemma 3 template compiles")
    }

    /// transformers' default ChatML template ([`CHATML_TEMPLATE`]).
    pub fn chatml() -> ChatTemplate {
        Self::new(CHATML_TEMPLATE, None, None).expect("the ChatML template compiles")
    }

    fn with_tokens(source: &str, tokens: Vec<(&'static str, String)>) -> Result<ChatTemplate> {
        let source: Arc<str> = source.into();
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_keep_trailing_newline(false);
        env.set_fuel(Some(TEMPLATE_FUEL));
        env.set_unknown_method_callback(py_methods);
        env.add_filter("trim", trim);
        env.add_function("raise_exception", |msg: String| -> std::result::Result<Value, Error> {
            Err(Error::new(ErrorKind::InvalidOperation, msg))
        });
        env.add_filter("tojson", tojson);
        let mut t = ChatTemplate { env, source: source.clone(), tokens };
        t.set_clock(None);
        t.env
            .add_template_owned(NAME, source.to_string())
            .map_err(|e| PupilError::Format(template_err("tokenizer.chat_template does not compile", &e)))?;
        Ok(t)
    }

    fn set_clock(&mut self, pinned: Option<i64>) {
        self.env.add_function("strftime_now", move |format: String| -> std::result::Result<Value, Error> {
            Ok(Value::from(strftime(&format, pinned.unwrap_or_else(now_unix_secs))))
        });
    }

    /// Pin the time `strftime_now` sees (seconds since 1970, UTC), for reproducible prompts.
    pub fn with_time(mut self, unix_secs: i64) -> Self {
        self.set_clock(Some(unix_secs));
        self
    }

    /// The Jinja source.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Render `messages`; with `add_generation_prompt` the text ends where the assistant's
    /// reply begins. A template's `raise_exception` (e.g. roles not alternating) is an error
    /// carrying its message. Tokenize the result with `parse_special = true`.
    pub fn render(&self, messages: &[ChatMessage], add_generation_prompt: bool) -> Result<String> {
        self.render_with(messages, add_generation_prompt, &[])
    }

    /// [`render`](Self::render) with extra template variables, as transformers'
    /// `apply_chat_template(..., **kwargs)` passes its keyword arguments into the template:
    /// `&[("enable_thinking", false.into())]` is Qwen3's non-thinking mode. A name the template
    /// does not read is ignored; one that is also a built-in variable (`tools`, `bos_token`, ...)
    /// replaces it, as transformers' kwargs replace the special-token variables.
    pub fn render_with(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
        extra: &[(&str, TemplateValue)],
    ) -> Result<String> {
        let mut ctx: Vec<(&str, Value)> = vec![
            ("messages", Value::from_serialize(messages)),
            ("add_generation_prompt", Value::from(add_generation_prompt)),
            ("tools", Value::from(())),
            ("documents", Value::from(())),
        ];
        ctx.extend(self.tokens.iter().map(|(n, t)| (*n, Value::from(t.as_str()))));
        // Last, so that they win: collecting into a map keeps the last value of a name.
        ctx.extend(extra.iter().map(|(n, v)| (*n, v.clone())));
        let ctx: Value = ctx.into_iter().collect();
        let template = self
            .env
            .get_template(NAME)
            .map_err(|e| PupilError::arg("ChatTemplate::render", template_err("chat template", &e)))?;
        template.render(ctx).map_err(|e| PupilError::arg("ChatTemplate::render", template_err("chat template", &e)))
    }
}

// ---- Python's idea of whitespace ----

/// Python's `str.isspace` for one character: Unicode White_Space (Rust's `is_whitespace`) plus
/// U+001C..U+001F, the ASCII separators Python also counts (bidi class B/S) and Rust does not.
/// Gemma's template trims every message, so `"\x1f hi"` must lose its `\x1f` as in jinja2.
fn py_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// jinja2's `trim` filter: `str(value).strip(chars)`.
fn trim(value: Value, chars: Option<String>) -> String {
    let s = match value.as_str() {
        Some(s) => Cow::Borrowed(s),
        None => Cow::Owned(value.to_string()),
    };
    match chars {
        Some(cs) => s.trim_matches(|c| cs.contains(c)).to_owned(),
        None => s.trim_matches(py_space).to_owned(),
    }
}

/// minijinja-contrib's Python methods, with `strip`/`lstrip`/`rstrip`/`isspace` using Python's
/// whitespace when called without characters.
fn py_methods(
    state: &minijinja::State,
    value: &Value,
    method: &str,
    args: &[Value],
) -> std::result::Result<Value, Error> {
    if let Some(s) = value.as_str() {
        let default_chars = match args {
            [] => true,
            [a] => a.is_none(),
            _ => false,
        };
        match method {
            "strip" if default_chars => return Ok(Value::from(s.trim_matches(py_space))),
            "lstrip" if default_chars => return Ok(Value::from(s.trim_start_matches(py_space))),
            "rstrip" if default_chars => return Ok(Value::from(s.trim_end_matches(py_space))),
            "isspace" if args.is_empty() => return Ok(Value::from(!s.is_empty() && s.chars().all(py_space))),
            _ => {}
        }
    }
    minijinja_contrib::pycompat::unknown_method_callback(state, value, method, args)
}

// ---- tojson as transformers defines it (Python's json.dumps) ----

fn tojson(value: &Value, kwargs: Kwargs) -> std::result::Result<String, Error> {
    let ensure_ascii: Option<bool> = kwargs.get("ensure_ascii")?;
    let indent: Option<Value> = kwargs.get("indent")?;
    let separators: Option<Value> = kwargs.get("separators")?;
    let sort_keys: Option<bool> = kwargs.get("sort_keys")?;
    kwargs.assert_all_used()?;
    let indent = match indent {
        None => None,
        Some(v) if v.is_none() => None,
        Some(v) => match (v.as_i64(), v.as_str()) {
            (Some(n), _) => Some(" ".repeat(n.max(0) as usize)),
            (None, Some(s)) => Some(s.to_owned()),
            _ => return Err(Error::new(ErrorKind::InvalidOperation, "tojson: indent must be an integer or a string")),
        },
    };
    let (item_sep, key_sep) = match separators {
        Some(v) if !v.is_none() => {
            let a = v.get_item_by_index(0)?;
            let b = v.get_item_by_index(1)?;
            match (a.as_str(), b.as_str()) {
                (Some(a), Some(b)) => (a.to_owned(), b.to_owned()),
                _ => return Err(Error::new(ErrorKind::InvalidOperation, "tojson: separators must be two strings")),
            }
        }
        _ => (if indent.is_some() { "," } else { ", " }.to_owned(), ": ".to_owned()),
    };
    let opts = JsonOpts {
        ascii: ensure_ascii.unwrap_or(false),
        indent,
        item_sep,
        key_sep,
        sort_keys: sort_keys.unwrap_or(false),
    };
    let mut out = String::new();
    write_json(&mut out, value, &opts, 0)?;
    Ok(out)
}

struct JsonOpts {
    ascii: bool,
    indent: Option<String>,
    item_sep: String,
    key_sep: String,
    sort_keys: bool,
}

fn write_json(out: &mut String, v: &Value, o: &JsonOpts, level: usize) -> std::result::Result<(), Error> {
    let newline = |out: &mut String, level: usize| {
        if let Some(ind) = &o.indent {
            out.push('\n');
            for _ in 0..level {
                out.push_str(ind);
            }
        }
    };
    match v.kind() {
        ValueKind::None => out.push_str("null"),
        ValueKind::Bool => out.push_str(if v.is_true() { "true" } else { "false" }),
        ValueKind::Number => {
            if v.is_integer() {
                let _ = write!(out, "{v}");
            } else {
                out.push_str(&python_float(f64::try_from(v.clone())?));
            }
        }
        ValueKind::String => json_string(out, v.as_str().unwrap_or_default(), o.ascii),
        ValueKind::Seq | ValueKind::Iterable => {
            let items: Vec<Value> = v.try_iter()?.collect();
            if items.is_empty() {
                out.push_str("[]");
                return Ok(());
            }
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(&o.item_sep);
                }
                newline(out, level + 1);
                write_json(out, item, o, level + 1)?;
            }
            newline(out, level);
            out.push(']');
        }
        ValueKind::Map => {
            let mut keys: Vec<Value> = v.try_iter()?.collect();
            if keys.is_empty() {
                out.push_str("{}");
                return Ok(());
            }
            if o.sort_keys {
                keys.sort();
            }
            out.push('{');
            for (i, k) in keys.iter().enumerate() {
                if i > 0 {
                    out.push_str(&o.item_sep);
                }
                newline(out, level + 1);
                match k.as_str() {
                    Some(s) => json_string(out, s, o.ascii),
                    None => json_string(out, &k.to_string(), o.ascii),
                }
                out.push_str(&o.key_sep);
                write_json(out, &v.get_item(k)?, o, level + 1)?;
            }
            newline(out, level);
            out.push('}');
        }
        kind => {
            return Err(Error::new(
                ErrorKind::InvalidOperation,
                format!("tojson: a value of type {kind} is not JSON serializable"),
            ))
        }
    }
    Ok(())
}

fn json_string(out: &mut String, s: &str, ascii: bool) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 || (ascii && (c as u32) > 0x7E) => {
                let mut buf = [0u16; 2];
                for unit in c.encode_utf16(&mut buf) {
                    let _ = write!(out, "\\u{unit:04x}");
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Python's `repr(float)`: shortest round-trip digits, fixed notation for exponents in
/// -4..16, else `1e+16` style.
fn python_float(x: f64) -> String {
    if x.is_nan() {
        return "NaN".into();
    }
    if x.is_infinite() {
        return if x > 0.0 { "Infinity" } else { "-Infinity" }.into();
    }
    let sci = format!("{x:e}");
    let (mantissa, exp) = sci.split_once('e').expect("{:e} has an exponent");
    let exp: i32 = exp.parse().expect("integer exponent");
    if (-4..16).contains(&exp) {
        let s = format!("{x}");
        if s.contains('.') {
            s
        } else {
            s + ".0"
        }
    } else {
        format!("{mantissa}e{}{:02}", if exp < 0 { '-' } else { '+' }, exp.abs())
    }
}

// ---- strftime_now ----

fn now_unix_secs() -> i64 {
    #[cfg(not(target_arch = "wasm32"))]
    {
        match std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
            Ok(d) => d.as_secs() as i64,
            Err(e) => -(e.duration().as_secs() as i64),
        }
    }
    #[cfg(all(target_arch = "wasm32", feature = "web"))]
    {
        (js_sys::Date::now() / 1000.0).floor() as i64
    }
    // wasm32 without the browser glue has no clock: pin one with `with_time`.
    #[cfg(all(target_arch = "wasm32", not(feature = "web")))]
    {
        0
    }
}

const MONTHS: [&str; 12] = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];
const DAYS: [&str; 7] = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"];

/// (year, month 1-12, day 1-31) of a day count since 1970-01-01 (Hinnant's civil_from_days).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// C/Python `strftime` for the directives chat templates use (`%d %b %Y`, `%Y-%m-%d`, ...), in
/// UTC. glibc's `%-d` (no padding) is supported; unknown directives are kept as written.
pub(crate) fn strftime(format: &str, unix_secs: i64) -> String {
    let days = unix_secs.div_euclid(86_400);
    let secs = unix_secs.rem_euclid(86_400);
    let (year, month, day) = civil_from_days(days);
    let (hour, minute, second) = (secs / 3600, secs / 60 % 60, secs % 60);
    let weekday = (days + 3).rem_euclid(7) as usize; // 1970-01-01 was a Thursday
    let leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
    let before = [0, 31, 59, 90, 120, 151, 181, 212, 243, 273, 304, 334][month as usize - 1];
    let yday = before + day + u32::from(leap && month > 2);
    let hour12 = if hour % 12 == 0 { 12 } else { hour % 12 };

    let mut out = String::new();
    let mut chars = format.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        let unpadded = chars.peek() == Some(&'-');
        if unpadded {
            chars.next();
        }
        let num = |out: &mut String, v: i64, width: usize| {
            if unpadded {
                let _ = write!(out, "{v}");
            } else {
                let _ = write!(out, "{v:0width$}");
            }
        };
        match chars.next() {
            Some('Y') => {
                let _ = write!(out, "{year}");
            }
            Some('y') => num(&mut out, year.rem_euclid(100), 2),
            Some('m') => num(&mut out, month as i64, 2),
            Some('d') => num(&mut out, day as i64, 2),
            Some('e') => {
                let _ = write!(out, "{day:>2}");
            }
            Some('j') => num(&mut out, yday as i64, 3),
            Some('H') => num(&mut out, hour, 2),
            Some('I') => num(&mut out, hour12, 2),
            Some('M') => num(&mut out, minute, 2),
            Some('S') => num(&mut out, second, 2),
            Some('p') => out.push_str(if hour < 12 { "AM" } else { "PM" }),
            Some('B') => out.push_str(MONTHS[month as usize - 1]),
            Some('b') | Some('h') => out.push_str(&MONTHS[month as usize - 1][..3]),
            Some('A') => out.push_str(DAYS[weekday]),
            Some('a') => out.push_str(&DAYS[weekday][..3]),
            Some('F') => {
                let _ = write!(out, "{year}-{month:02}-{day:02}");
            }
            Some('T') => {
                let _ = write!(out, "{hour:02}:{minute:02}:{second:02}");
            }
            Some('%') => out.push('%'),
            Some(other) => {
                out.push('%');
                if unpadded {
                    out.push('-');
                }
                out.push(other);
            }
            None => out.push('%'),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strftime_matches_python() {
        // python3 -c "import datetime as d; print(d.datetime.fromtimestamp(T, d.timezone.utc).strftime(F))"
        let t = 1_719_835_496; // 2024-07-01 12:04:56 UTC, a Monday
        assert_eq!(strftime("%d %b %Y", t), "01 Jul 2024");
        assert_eq!(
            strftime("%-d %B %Y, %A %a %H:%M:%S %I%p %j %y %e%%", t),
            "1 July 2024, Monday Mon 12:04:56 12PM 183 24  1%"
        );
        assert_eq!(strftime("%Y-%m-%d %F %T %Q", 0), "1970-01-01 1970-01-01 00:00:00 %Q");
        assert_eq!(strftime("%Y-%m-%d %a", 951_782_400), "2000-02-29 Tue");
        assert_eq!(strftime("%Y-%m-%d %H", -1), "1969-12-31 23");
    }

    #[test]
    fn python_float_repr() {
        for (x, s) in [
            (1.0, "1.0"),
            (0.1, "0.1"),
            (1e16, "1e+16"),
            (1.5e-7, "1.5e-07"),
            (-2.5, "-2.5"),
            (123456.789, "123456.789"),
            (1e-4, "0.0001"),
        ] {
            assert_eq!(python_float(x), s);
        }
    }
}
