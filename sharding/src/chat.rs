//! Chat templates: rendering `tokenizer.chat_template` (a Jinja template written for
//! Hugging Face `transformers`) into the prompt text a chat model expects.
//!
//! Rendering follows what `transformers.apply_chat_template` does: Jinja with
//! `trim_blocks` and `lstrip_blocks`, loop controls, Python string methods (via
//! minijinja-contrib's pycompat), `raise_exception(msg)`, `strftime_now(fmt)` and a
//! `tojson` that writes JSON the way Python's `json.dumps(..., ensure_ascii=False)` does.
//! The variables are `messages`, `add_generation_prompt`, `bos_token` and `eos_token`.
//!
//! A GGUF without a template (base models such as Gemma 3 270m) gives `Ok(None)` from
//! [`ChatTemplate::from_gguf`]; callers then send raw text or use their own format.

use minijinja::value::Value;
use minijinja::{Environment, Error, ErrorKind};
use serde::Serialize;

use crate::gguf::{GgufError, Metadata};

/// Why a chat template could not be compiled or rendered.
#[derive(Debug, thiserror::Error)]
pub enum ChatError {
    /// The GGUF metadata holding the template or special tokens is malformed.
    #[error(transparent)]
    Metadata(#[from] GgufError),
    /// The template does not parse.
    #[error("chat template does not compile: {0}")]
    Compile(#[source] Error),
    /// Rendering failed (including the template calling `raise_exception`).
    #[error("chat template failed to render: {0}")]
    Render(#[source] Error),
}

/// One chat message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Message {
    /// `system`, `user`, `assistant`, ...
    pub role: String,
    /// The message text.
    pub content: String,
}

impl Message {
    /// A message with `role` and `content`.
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Message {
            role: role.into(),
            content: content.into(),
        }
    }
}

/// A compiled chat template with the model's BOS/EOS texts.
#[derive(Debug)]
pub struct ChatTemplate {
    env: Environment<'static>,
    bos_token: String,
    eos_token: String,
}

const NAME: &str = "chat_template";

impl ChatTemplate {
    /// Compiles `source` with the given BOS/EOS token texts.
    pub fn new(
        source: &str,
        bos_token: impl Into<String>,
        eos_token: impl Into<String>,
    ) -> Result<Self, ChatError> {
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", raise_exception);
        env.add_function("strftime_now", strftime_now);
        env.add_filter("tojson", tojson);
        env.add_template_owned(NAME, source.to_owned())
            .map_err(ChatError::Compile)?;
        Ok(ChatTemplate {
            env,
            bos_token: bos_token.into(),
            eos_token: eos_token.into(),
        })
    }

    /// The template in `tokenizer.chat_template`, or `None` when the GGUF has none.
    pub fn from_gguf(meta: &Metadata) -> Result<Option<Self>, ChatError> {
        let Some(source) = meta.opt_str("tokenizer.chat_template")? else {
            return Ok(None);
        };
        let tokens = meta.strings("tokenizer.ggml.tokens").ok();
        let text = |key: &str| -> Result<String, ChatError> {
            let id = meta.opt_usize(key)?;
            Ok(id
                .and_then(|i| tokens.and_then(|t| t.get(i)))
                .cloned()
                .unwrap_or_default())
        };
        let bos = text("tokenizer.ggml.bos_token_id")?;
        let eos = text("tokenizer.ggml.eos_token_id")?;
        Self::new(source, bos, eos).map(Some)
    }

    /// Renders `messages`; with `add_generation_prompt` the text ends where the
    /// assistant's reply begins.
    pub fn render(
        &self,
        messages: &[Message],
        add_generation_prompt: bool,
    ) -> Result<String, ChatError> {
        let template = self.env.get_template(NAME).map_err(ChatError::Render)?;
        template
            .render(minijinja::context! {
                messages => messages,
                add_generation_prompt => add_generation_prompt,
                bos_token => &self.bos_token,
                eos_token => &self.eos_token,
            })
            .map_err(ChatError::Render)
    }
}

fn raise_exception(message: String) -> Result<Value, Error> {
    Err(Error::new(ErrorKind::InvalidOperation, message))
}

/// Python's `strftime` over the current UTC time, for the common directives.
fn strftime_now(format: String) -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    strftime(secs, &format)
}

/// Formats `secs` since the Unix epoch (UTC) with `%Y %m %d %H %M %S %B %b %A %a %j %y %%`;
/// other directives are kept verbatim.
fn strftime(secs: u64, format: &str) -> String {
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
    const DAYS: [&str; 7] = [
        "Thursday",
        "Friday",
        "Saturday",
        "Sunday",
        "Monday",
        "Tuesday",
        "Wednesday",
    ];
    let days = secs / 86_400;
    let rem = secs % 86_400;
    let (year, month, day) = civil_from_days(days);
    let day_of_year = days - days_from_civil(year, 1, 1) + 1;
    let weekday = DAYS[(days % 7) as usize];
    let month_name = MONTHS[(month - 1) as usize];
    let mut out = String::with_capacity(format.len() + 16);
    let mut chars = format.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('Y') => out.push_str(&year.to_string()),
            Some('y') => out.push_str(&format!("{:02}", year % 100)),
            Some('m') => out.push_str(&format!("{month:02}")),
            Some('d') => out.push_str(&format!("{day:02}")),
            Some('j') => out.push_str(&format!("{day_of_year:03}")),
            Some('H') => out.push_str(&format!("{:02}", rem / 3600)),
            Some('M') => out.push_str(&format!("{:02}", rem / 60 % 60)),
            Some('S') => out.push_str(&format!("{:02}", rem % 60)),
            Some('B') => out.push_str(month_name),
            Some('b') => out.push_str(&month_name[..3]),
            Some('A') => out.push_str(weekday),
            Some('a') => out.push_str(&weekday[..3]),
            Some('%') => out.push('%'),
            Some(other) => {
                out.push('%');
                out.push(other);
            }
            None => out.push('%'),
        }
    }
    out
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
fn days_from_civil(y: u64, m: u64, d: u64) -> u64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y / 400;
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    (era * 146_097 + doe).saturating_sub(719_468)
}

/// The date `days` after 1970-01-01.
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + u64::from(m <= 2);
    (y, m, d)
}

/// JSON as Python's `json.dumps(value, ensure_ascii=False, indent=indent)` writes it:
/// `", "` and `": "` separators when compact, no HTML escaping.
fn tojson(value: Value, indent: Option<usize>) -> Result<Value, Error> {
    let json = |e: serde_json::Error| Error::new(ErrorKind::InvalidOperation, e.to_string());
    let mut buf = Vec::new();
    match indent {
        Some(n) => {
            let pad = vec![b' '; n];
            let fmt = serde_json::ser::PrettyFormatter::with_indent(&pad);
            let mut ser = serde_json::Serializer::with_formatter(&mut buf, fmt);
            value.serialize(&mut ser).map_err(json)?;
        }
        None => {
            let mut ser = serde_json::Serializer::with_formatter(&mut buf, PythonFormatter);
            value.serialize(&mut ser).map_err(json)?;
        }
    }
    let text = String::from_utf8(buf)
        .map_err(|e| Error::new(ErrorKind::InvalidOperation, e.to_string()))?;
    Ok(Value::from_safe_string(text))
}

/// serde_json formatter with Python's default compact separators.
struct PythonFormatter;

impl serde_json::ser::Formatter for PythonFormatter {
    fn begin_array_value<W: ?Sized + std::io::Write>(
        &mut self,
        writer: &mut W,
        first: bool,
    ) -> std::io::Result<()> {
        if first {
            Ok(())
        } else {
            writer.write_all(b", ")
        }
    }

    fn begin_object_key<W: ?Sized + std::io::Write>(
        &mut self,
        writer: &mut W,
        first: bool,
    ) -> std::io::Result<()> {
        if first {
            Ok(())
        } else {
            writer.write_all(b", ")
        }
    }

    fn begin_object_value<W: ?Sized + std::io::Write>(
        &mut self,
        writer: &mut W,
    ) -> std::io::Result<()> {
        writer.write_all(b": ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strftime_formats_known_dates() {
        // 2024-02-29 13:05:09 UTC, a Thursday.
        let t = 1_709_211_909;
        assert_eq!(
            strftime(t, "%d %B %Y %H:%M:%S %a %j %%"),
            "29 February 2024 13:05:09 Thu 060 %"
        );
        assert_eq!(strftime(0, "%Y-%m-%d %A"), "1970-01-01 Thursday");
    }

    #[test]
    fn python_style_json_and_exceptions() {
        let t = ChatTemplate::new(
            "{{ x | tojson }}|{{ 'a,b'.split(',') | length }}{% if fail %}{{ raise_exception('no') }}{% endif %}",
            "",
            "",
        )
        .unwrap();
        let env = &t.env;
        let tmpl = env.get_template(NAME).unwrap();
        let out = tmpl
            .render(minijinja::context! { x => serde_json::json!({"a": [1, "é<"], "b": null}), fail => false })
            .unwrap();
        assert_eq!(out, r#"{"a": [1, "é<"], "b": null}|2"#);
        let err = tmpl.render(minijinja::context! { x => 1, fail => true });
        assert!(err.is_err());
    }

    #[test]
    fn bad_template_is_a_compile_error() {
        assert!(matches!(
            ChatTemplate::new("{% for %}", "", ""),
            Err(ChatError::Compile(_))
        ));
    }
}
