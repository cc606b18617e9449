//! Chat templates: the model's Jinja template rendered with minijinja configured like
//! transformers' `apply_chat_template` (trim_blocks, lstrip_blocks, Python string methods,
//! `raise_exception`, `strftime_now`, the special tokens in the context).
//!
//! A template comes with the model file, so it is untrusted code: a render is bounded in
//! instructions (fuel), in nesting (recursion limit) and in the size of what it writes,
//! and each limit reached is an error that names it. (minijinja itself caps `range` at
//! 10,000 items and a repeated string at 100 MB.) Not bounded: a value that doubles itself
//! (`{% set ns.s = ns.s ~ ns.s %}` thirty times) grows past any memory in few
//! instructions, and minijinja offers no hook on concatenation to stop it; such a
//! template exhausts memory rather than rendering.

use crate::error::{Error, Result};
use minijinja::{Environment, Error as JErr, ErrorKind, Value};
use serde::Serialize;

#[derive(Clone, Debug, Serialize, serde::Deserialize, PartialEq)]
pub struct Message {
    pub role: String,
    pub content: String,
}

impl Message {
    pub fn new(role: &str, content: &str) -> Self {
        Message { role: role.to_string(), content: content.to_string() }
    }
}

/// Instructions a render may run: a fixed allowance plus one per message. Real templates
/// spend well under 200 per message (Qwen3's, the longest seen, about 120).
const FUEL_BASE: u64 = 200_000;
const FUEL_PER_MESSAGE: u64 = 2_000;
/// Nesting depth (loops and ifs count 1, macro calls about 10); real templates nest < 10.
const RECURSION_LIMIT: usize = 100;
/// Rendered bytes allowed beyond the messages' own text (each message may appear twice,
/// e.g. in a system prompt and a turn).
const OUTPUT_BASE: usize = 1 << 20;

/// A writer that refuses to grow past `limit` bytes.
struct Capped {
    out: Vec<u8>,
    limit: usize,
    hit: bool,
}

impl std::io::Write for Capped {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.out.len() + buf.len() > self.limit {
            self.hit = true;
            return Err(std::io::Error::other("rendered size limit"));
        }
        self.out.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

pub struct ChatTemplate {
    env: Environment<'static>,
    bos_token: String,
    eos_token: String,
}

fn raise_exception(msg: String) -> std::result::Result<Value, JErr> {
    Err(JErr::new(ErrorKind::InvalidOperation, msg))
}

/// `strftime_now(format)` with the specifiers templates use (%Y %m %d %B %b %H %M %S %%).
fn strftime_now(fmt: String) -> String {
    let secs =
        web_time::SystemTime::now().duration_since(web_time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0) as i64;
    let days = secs.div_euclid(86400);
    let tod = secs.rem_euclid(86400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719468;
    let era = z.div_euclid(146097);
    let doe = z - era * 146097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
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
    let month = MONTHS[(m - 1) as usize];
    let mut out = String::new();
    let mut it = fmt.chars();
    while let Some(c) = it.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match it.next() {
            Some('Y') => out.push_str(&y.to_string()),
            Some('m') => out.push_str(&format!("{m:02}")),
            Some('d') => out.push_str(&format!("{d:02}")),
            Some('B') => out.push_str(month),
            Some('b') => out.push_str(&month[..3]),
            Some('H') => out.push_str(&format!("{:02}", tod / 3600)),
            Some('M') => out.push_str(&format!("{:02}", tod / 60 % 60)),
            Some('S') => out.push_str(&format!("{:02}", tod % 60)),
            Some('%') => out.push('%'),
            Some(o) => {
                out.push('%');
                out.push(o);
            }
            None => out.push('%'),
        }
    }
    out
}

impl ChatTemplate {
    pub fn new(source: &str, bos_token: &str, eos_token: &str) -> Result<Self> {
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", raise_exception);
        env.add_function("strftime_now", strftime_now);
        env.set_recursion_limit(RECURSION_LIMIT);
        env.add_template_owned("chat", source.to_string())
            .map_err(|e| Error::format("chat template", format!("does not parse: {e}")))?;
        Ok(ChatTemplate { env, bos_token: bos_token.to_string(), eos_token: eos_token.to_string() })
    }

    /// The conversation as the model expects it; with `add_generation_prompt` the text ends
    /// where the assistant's reply begins.
    pub fn render(&self, messages: &[Message], add_generation_prompt: bool) -> Result<String> {
        // Fuel is per environment; a clone (cheap: templates are shared) carries this
        // render's allowance.
        let mut env = self.env.clone();
        let fuel = FUEL_BASE + FUEL_PER_MESSAGE * messages.len() as u64;
        env.set_fuel(Some(fuel));
        let t = env.get_template("chat").map_err(|e| Error::format("chat template", e))?;
        let text_bytes: usize = messages.iter().map(|m| m.role.len() + m.content.len()).sum();
        let limit = OUTPUT_BASE + 2 * text_bytes;
        let mut out = Capped { out: Vec::new(), limit, hit: false };
        let ctx = minijinja::context! {
            messages => messages,
            add_generation_prompt => add_generation_prompt,
            bos_token => &self.bos_token,
            eos_token => &self.eos_token,
        };
        match t.render_captured_to(ctx, &mut out) {
            Ok(_) => String::from_utf8(out.out).map_err(|_| Error::input("chat template: rendered text is not UTF-8")),
            Err(_) if out.hit => Err(Error::input(format!(
                "chat template: the rendered text exceeds its limit of {limit} bytes (1 MiB + twice the messages)"
            ))),
            Err(e) if e.kind() == ErrorKind::OutOfFuel => Err(Error::input(format!(
                "chat template: the render ran out of fuel ({fuel} instructions for {} messages)",
                messages.len()
            ))),
            Err(e) => Err(Error::input(format!("chat template: {e}"))),
        }
    }
}
