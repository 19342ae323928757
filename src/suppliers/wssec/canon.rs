//! Envelope splitting and Body canonicalisation: the exclusive-c14n subset described in
//! [`super`], built on quick-xml, rejecting anything outside it.

use quick_xml::Reader;
use quick_xml::events::{BytesStart, Event};

use super::{BODY_ID, SOAP11_NS, WSSE_NS, WSU_NS};

pub(super) const XML_NS: &str = "http://www.w3.org/XML/1998/namespace";
pub(super) const RESERVED_PREFIXES: [&str; 3] = ["wsse", "wsu", "ds"];

/// The unsigned envelope cut into what we copy and what we rewrite.
pub(super) struct Parts<'a> {
    /// Input up to where the Header's open tag (ours or theirs) is written.
    pub(super) before_header: &'a str,
    /// Header open tag (and, for a non-empty Header, nothing else: its content is in `between`).
    pub(super) header_open: String,
    /// Closing tag of a Header we create or expand; empty when the input's Header had content.
    pub(super) header_close: String,
    /// Input between the Security insertion point and the Body.
    pub(super) between: &'a str,
    /// The Body's exclusive-c14n form, which is digested.
    pub(super) canonical_body: String,
    /// The Body as written into the document (see [`Canon`]).
    pub(super) document_body: String,
    /// Input after the Body.
    pub(super) after_body: &'a str,
    /// A prefix bound to the SOAP 1.1 namespace where Security goes.
    pub(super) soap_prefix: String,
}

#[derive(PartialEq)]
pub(super) enum Stage {
    Prolog,
    InEnvelope { seen_header: bool },
    InHeader { depth: usize },
    InBody { depth: usize },
    AfterBody,
    AfterEnvelope,
}

/// A namespace binding: prefix ("" for the default namespace) and URI.
pub(super) type Binding = (String, String);

pub(super) struct NsStack {
    pub(super) frames: Vec<Vec<Binding>>,
}

impl NsStack {
    pub(super) fn lookup(&self, prefix: &str) -> Option<&str> {
        if prefix == "xml" {
            return Some(XML_NS);
        }
        self.frames.iter().rev().flat_map(|f| f.iter().rev()).find(|(p, _)| p == prefix).map(|(_, u)| u.as_str())
    }
}

/// An element's name, attributes and declarations, values normalised.
pub(super) struct Element {
    pub(super) qname: String,
    pub(super) prefix: String,
    pub(super) local: String,
    pub(super) decls: Vec<Binding>,
    pub(super) attrs: Vec<(String, String)>,
}

pub(super) fn split_qname(qname: &str) -> Result<(&str, &str), String> {
    let (prefix, local) = match qname.split_once(':') {
        Some((p, l)) => (p, l),
        None => ("", qname),
    };
    if local.is_empty() || local.contains(':') || (qname.contains(':') && prefix.is_empty()) {
        return Err(format!("malformed name {qname:?}"));
    }
    Ok((prefix, local))
}

pub(super) fn read_element(e: &BytesStart<'_>) -> Result<Element, String> {
    let qname = e.name().0.to_string();
    let (prefix, local) = split_qname(&qname)?;
    let (prefix, local) = (prefix.to_string(), local.to_string());
    let mut decls = Vec::new();
    let mut attrs = Vec::new();
    for attr in e.attributes() {
        let attr = attr.map_err(|err| format!("malformed attribute on {qname}: {err}"))?;
        let key = attr.key.0;
        let value = normalize_attr_value(&attr.value)?;
        if key == "xmlns" {
            decls.push((String::new(), value));
        } else if let Some(p) = key.strip_prefix("xmlns:") {
            split_qname(p)?;
            if value.is_empty() {
                return Err(format!("namespace prefix {p} undeclared (not allowed in XML 1.0)"));
            }
            if RESERVED_PREFIXES.contains(&p) {
                return Err(format!("the input declares prefix {p}, which the signer reserves"));
            }
            decls.push((p.to_string(), value));
        } else {
            split_qname(key)?;
            attrs.push((key.to_string(), value));
        }
    }
    Ok(Element { qname, prefix, local, decls, attrs })
}

/// The character a reference (`&name;` without `&` and `;`) stands for.
pub(super) fn resolve_reference(name: &str) -> Result<char, String> {
    if let Some(num) = name.strip_prefix('#') {
        let code = match num.strip_prefix('x') {
            Some(hex) => u32::from_str_radix(hex, 16),
            None => num.parse::<u32>(),
        }
        .map_err(|_| "bad character reference".to_string())?;
        return char::from_u32(code).filter(|&c| c != '\0').ok_or_else(|| "bad character reference".to_string());
    }
    match name {
        "lt" => Ok('<'),
        "gt" => Ok('>'),
        "amp" => Ok('&'),
        "quot" => Ok('"'),
        "apos" => Ok('\''),
        // The name is not echoed: the Body holds credentials and errors get logged.
        _ => Err("unknown entity reference (only the five predefined ones are allowed)".to_string()),
    }
}

/// XML attribute-value normalisation for CDATA attributes (no DTD): line ends normalised, then
/// literal tab/CR/LF become a space, references resolved (their characters kept as is).
pub(super) fn normalize_attr_value(raw: &str) -> Result<String, String> {
    let mut out = String::with_capacity(raw.len());
    let mut chars = raw.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        match c {
            '\r' => {
                if chars.peek().is_some_and(|&(_, n)| n == '\n') {
                    chars.next();
                }
                out.push(' ');
            }
            '\n' | '\t' => out.push(' '),
            '<' => return Err("'<' in an attribute value".to_string()),
            '&' => {
                let end = raw[i..].find(';').ok_or("unterminated reference in an attribute value")?;
                out.push(resolve_reference(&raw[i + 1..i + end])?);
                while chars.peek().is_some_and(|&(j, _)| j <= i + end) {
                    chars.next();
                }
            }
            _ => out.push(c),
        }
    }
    Ok(out)
}

pub(super) fn escape_text(s: &str, out: &mut String) {
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '\r' => out.push_str("&#xD;"),
            _ => out.push(c),
        }
    }
}

pub(super) fn escape_attr(s: &str, out: &mut String) {
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '"' => out.push_str("&quot;"),
            '\t' => out.push_str("&#x9;"),
            '\n' => out.push_str("&#xA;"),
            '\r' => out.push_str("&#xD;"),
            _ => out.push(c),
        }
    }
}

/// The exclusive-c14n writer for the Body subtree.
///
/// It writes two texts: `out`, the canonical form that is digested, and `doc`, what goes into the
/// document. They differ only by ` xmlns=""` on an unprefixed element in no namespace whose
/// document context has a non-empty default namespace (inherited from outside the Body or from
/// an input declaration that c14n drops): c14n omits that undeclaration, the document needs it
/// to keep the element out of the inherited namespace. A canonicaliser reading `doc` again
/// produces `out`, as exclusive c14n ignores `xmlns=""` unless an output ancestor wrote a
/// non-empty default.
pub(super) struct Canon {
    pub(super) out: String,
    pub(super) doc: String,
    /// Namespace bindings written on each open output element.
    pub(super) rendered: Vec<Vec<Binding>>,
    /// The default namespace in scope in `doc` at the Body's parent.
    pub(super) outer_default: String,
    /// For each open element, the default namespace it set in `doc`, if it set one.
    pub(super) doc_default: Vec<Option<String>>,
}

impl Canon {
    pub(super) fn new(outer_default: &str) -> Canon {
        Canon {
            out: String::new(),
            doc: String::new(),
            rendered: Vec::new(),
            outer_default: outer_default.to_string(),
            doc_default: Vec::new(),
        }
    }

    pub(super) fn text(&mut self, s: &str) {
        let from = self.out.len();
        escape_text(s, &mut self.out);
        let escaped = &self.out[from..];
        self.doc.push_str(escaped);
    }

    pub(super) fn doc_default_in_scope(&self) -> &str {
        self.doc_default.iter().rev().flatten().next().unwrap_or(&self.outer_default)
    }

    pub(super) fn rendered_value(&self, prefix: &str) -> Option<&str> {
        let found =
            self.rendered.iter().rev().flat_map(|f| f.iter()).find(|(p, _)| p == prefix).map(|(_, u)| u.as_str());
        // The default namespace starts out empty; named prefixes start out unrendered.
        found.or(if prefix.is_empty() { Some("") } else { None })
    }

    /// Writes the start tag of `el` (whose declarations are already on `ns`), plus `extra`
    /// attributes (qname, namespace URI of their prefix, value) that are not in the input.
    pub(super) fn start(&mut self, el: &Element, ns: &NsStack, extra: &[(&str, &str, &str)]) -> Result<(), String> {
        // Namespaces visibly used: the element's prefix (or the default) and attribute prefixes.
        let mut used: Vec<String> = vec![el.prefix.clone()];
        for (qname, _) in &el.attrs {
            if let Some((p, _)) = qname.split_once(':') {
                used.push(p.to_string());
            }
        }
        for (qname, _, _) in extra {
            if let Some((p, _)) = qname.split_once(':') {
                used.push(p.to_string());
            }
        }
        used.sort();
        used.dedup();
        let mut frame: Vec<Binding> = Vec::new();
        for prefix in used {
            if prefix == "xml" {
                continue;
            }
            let uri = match extra.iter().find(|(q, _, _)| q.split_once(':').is_some_and(|(p, _)| p == prefix)) {
                Some((_, uri, _)) => uri.to_string(),
                None if prefix.is_empty() => ns.lookup("").unwrap_or("").to_string(),
                None => ns.lookup(&prefix).ok_or_else(|| format!("prefix {prefix} is not declared"))?.to_string(),
            };
            if self.rendered_value(&prefix) != Some(uri.as_str()) {
                frame.push((prefix, uri));
            }
        }
        // Attributes sorted by (namespace URI, local name); unqualified ones have no URI.
        let mut attrs: Vec<(String, String, &str, &str)> = Vec::new();
        for (qname, value) in &el.attrs {
            let (prefix, local) = split_qname(qname)?;
            let uri = if prefix.is_empty() {
                String::new()
            } else {
                ns.lookup(prefix).ok_or_else(|| format!("prefix {prefix} is not declared"))?.to_string()
            };
            attrs.push((uri, local.to_string(), qname.as_str(), value.as_str()));
        }
        for (qname, uri, value) in extra {
            let (_, local) = split_qname(qname)?;
            attrs.push((uri.to_string(), local.to_string(), qname, value));
        }
        attrs.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
        if attrs.windows(2).any(|w| w[0].0 == w[1].0 && w[0].1 == w[1].1) {
            return Err(format!("duplicate attribute on {}", el.qname));
        }
        let from = self.out.len();
        self.out.push('<');
        self.out.push_str(&el.qname);
        for (prefix, uri) in &frame {
            self.out.push_str(if prefix.is_empty() { " xmlns" } else { " xmlns:" });
            self.out.push_str(prefix);
            self.out.push_str("=\"");
            escape_attr(uri, &mut self.out);
            self.out.push('"');
        }
        for (_, _, qname, value) in &attrs {
            self.out.push(' ');
            self.out.push_str(qname);
            self.out.push_str("=\"");
            escape_attr(value, &mut self.out);
            self.out.push('"');
        }
        self.out.push('>');
        let tag = &self.out[from..];
        let written_default = frame.iter().find(|(p, _)| p.is_empty()).map(|(_, u)| u.clone());
        let undeclare = el.prefix.is_empty() && written_default.is_none() && !self.doc_default_in_scope().is_empty();
        if undeclare {
            // Only reached when c14n wrote no default here, so `tag` has no xmlns attribute.
            self.doc.push('<');
            self.doc.push_str(&el.qname);
            self.doc.push_str(" xmlns=\"\"");
            self.doc.push_str(tag.get(1 + el.qname.len()..).unwrap_or(">"));
            self.doc_default.push(Some(String::new()));
        } else {
            self.doc.push_str(tag);
            self.doc_default.push(written_default);
        }
        self.rendered.push(frame);
        Ok(())
    }

    pub(super) fn end(&mut self, qname: &str) {
        for out in [&mut self.out, &mut self.doc] {
            out.push_str("</");
            out.push_str(qname);
            out.push('>');
        }
        self.rendered.pop();
        self.doc_default.pop();
    }
}

pub(super) fn is_soap(ns: &NsStack, el: &Element, local: &str) -> bool {
    el.local == local && !el.prefix.is_empty() && ns.lookup(&el.prefix) == Some(SOAP11_NS)
}

pub(super) fn offset(pos: u64) -> Result<usize, String> {
    usize::try_from(pos).map_err(|_| "envelope too large".to_string())
}

pub(super) fn split_envelope(input: &str) -> Result<Parts<'_>, String> {
    let mut reader = Reader::from_str(input);
    {
        let config = reader.config_mut();
        config.check_end_names = true;
        config.expand_empty_elements = false;
        config.trim_text(false);
    }
    let mut ns = NsStack { frames: Vec::new() };
    let mut stage = Stage::Prolog;
    let mut canon = Canon::new("");
    let mut env_prefix = String::new();
    // (start of the Header's tag, end of it, open tag text, close tag text, soap prefix)
    let mut header: Option<(usize, usize, String, String, String)> = None;
    let mut body_start = 0usize;
    let mut body_end = 0usize;

    loop {
        let start = offset(reader.buffer_position())?;
        let event = reader.read_event().map_err(|e| format!("envelope is not well-formed XML: {e}"))?;
        let end = offset(reader.buffer_position())?;
        match event {
            Event::Eof => break,
            Event::Decl(d) => {
                if stage != Stage::Prolog || start != 0 {
                    return Err("misplaced XML declaration".to_string());
                }
                if d.version().map_err(|e| format!("bad XML declaration: {e}"))?.as_ref() != "1.0" {
                    return Err("only XML 1.0 is supported".to_string());
                }
                if let Some(enc) = d.encoding() {
                    let enc = enc.map_err(|e| format!("bad XML declaration: {e}"))?;
                    if !enc.eq_ignore_ascii_case("utf-8") {
                        return Err(format!("unsupported encoding {enc:?} (UTF-8 only)"));
                    }
                }
            }
            Event::Text(t) => {
                let text = t.xml10_content();
                match &stage {
                    Stage::InBody { .. } => canon.text(&text),
                    Stage::InHeader { .. } => {}
                    _ if text.chars().all(|c| matches!(c, ' ' | '\t' | '\r' | '\n')) => {}
                    _ => return Err("unexpected text outside the Header and Body".to_string()),
                }
            }
            Event::GeneralRef(r) => match &stage {
                Stage::InBody { .. } => {
                    let c = resolve_reference(&r.into_inner())?;
                    canon.text(c.encode_utf8(&mut [0u8; 4]));
                }
                Stage::InHeader { .. } => {
                    resolve_reference(&r.into_inner())?;
                }
                _ => return Err("unexpected reference outside the Header and Body".to_string()),
            },
            Event::CData(c) => match &stage {
                Stage::InBody { .. } => canon.text(&c.xml10_content()),
                Stage::InHeader { .. } => {}
                _ => return Err("unexpected CDATA outside the Header and Body".to_string()),
            },
            Event::Comment(_) => return Err("comments are not supported in the envelope".to_string()),
            Event::PI(_) => return Err("processing instructions are not supported in the envelope".to_string()),
            Event::DocType(_) => return Err("a DOCTYPE is not supported in the envelope".to_string()),
            Event::Start(_) | Event::Empty(_) => {
                let (e, empty) = match &event {
                    Event::Empty(e) => (e, true),
                    Event::Start(e) => (e, false),
                    _ => return Err("internal: not a start tag".to_string()),
                };
                let el = read_element(e)?;
                ns.frames.push(el.decls.clone());
                match &mut stage {
                    Stage::Prolog => {
                        if !is_soap(&ns, &el, "Envelope") {
                            return Err("the root element is not a prefixed SOAP 1.1 Envelope".to_string());
                        }
                        if empty {
                            return Err("the Envelope is empty".to_string());
                        }
                        env_prefix = el.prefix.clone();
                        stage = Stage::InEnvelope { seen_header: false };
                    }
                    Stage::InEnvelope { seen_header } if is_soap(&ns, &el, "Header") => {
                        if *seen_header {
                            return Err("more than one Header".to_string());
                        }
                        if empty {
                            let tag = input.get(start..end).ok_or("bad offsets")?;
                            let open = format!("{}>", tag.trim_end_matches("/>").trim_end());
                            let close = format!("</{}>", el.qname);
                            header = Some((start, end, open, close, el.prefix.clone()));
                            ns.frames.pop();
                            *seen_header = true;
                        } else {
                            let tag = input.get(start..end).ok_or("bad offsets")?;
                            header = Some((start, end, tag.to_string(), String::new(), el.prefix.clone()));
                            stage = Stage::InHeader { depth: 1 };
                        }
                    }
                    Stage::InEnvelope { .. } if is_soap(&ns, &el, "Body") => {
                        if !el.attrs.is_empty() {
                            return Err("the Body has attributes other than namespace declarations".to_string());
                        }
                        body_start = start;
                        // The default namespace the document has at the Body's parent.
                        let outer = ns.frames.len().saturating_sub(1);
                        let outer_default = NsStack { frames: ns.frames[..outer].to_vec() };
                        canon = Canon::new(outer_default.lookup("").unwrap_or(""));
                        canon.start(&el, &ns, &[("wsu:Id", WSU_NS, BODY_ID)])?;
                        if empty {
                            canon.end(&el.qname);
                            ns.frames.pop();
                            body_end = end;
                            stage = Stage::AfterBody;
                        } else {
                            stage = Stage::InBody { depth: 1 };
                        }
                    }
                    Stage::InHeader { depth } => {
                        if el.local == "Security" && ns.lookup(&el.prefix) == Some(WSSE_NS) {
                            return Err("the envelope already has a wsse:Security header".to_string());
                        }
                        if empty {
                            ns.frames.pop();
                        } else {
                            *depth += 1;
                        }
                    }
                    Stage::InBody { depth } => {
                        canon.start(&el, &ns, &[])?;
                        if empty {
                            canon.end(&el.qname);
                            ns.frames.pop();
                        } else {
                            *depth += 1;
                        }
                    }
                    _ => return Err(format!("unexpected element {} in the envelope", el.qname)),
                }
            }
            Event::End(e) => {
                ns.frames.pop();
                match &mut stage {
                    Stage::InHeader { depth } => {
                        *depth -= 1;
                        if *depth == 0 {
                            stage = Stage::InEnvelope { seen_header: true };
                        }
                    }
                    Stage::InBody { depth } => {
                        canon.end(e.name().0);
                        *depth -= 1;
                        if *depth == 0 {
                            body_end = end;
                            stage = Stage::AfterBody;
                        }
                    }
                    Stage::AfterBody => stage = Stage::AfterEnvelope,
                    _ => return Err("the envelope has no Body".to_string()),
                }
            }
        }
    }
    if stage != Stage::AfterEnvelope {
        return Err("the envelope is incomplete or has no Body".to_string());
    }
    let slice = |a: usize, b: usize| input.get(a..b).ok_or_else(|| "bad offsets".to_string());
    let parts = match header {
        Some((hs, he, open, close, prefix)) => Parts {
            before_header: slice(0, hs)?,
            header_open: open,
            header_close: close,
            between: slice(he, body_start)?,
            canonical_body: canon.out,
            document_body: canon.doc,
            after_body: slice(body_end, input.len())?,
            soap_prefix: prefix,
        },
        None => Parts {
            before_header: slice(0, body_start)?,
            header_open: format!("<{env_prefix}:Header>"),
            header_close: format!("</{env_prefix}:Header>"),
            between: "",
            canonical_body: canon.out,
            document_body: canon.doc,
            after_body: slice(body_end, input.len())?,
            soap_prefix: env_prefix,
        },
    };
    Ok(parts)
}
