//! Safe XML for the XML suppliers (TPP, Vision) and their simulators.
//!
//! Answers are parsed with quick-xml's streaming namespace-aware reader into a small
//! element tree ([`Element`]) so classifiers can walk it by namespace URI and local name,
//! never by prefix. Safety rules:
//!
//! - A `<!DOCTYPE` anywhere in the body is refused ([`XmlError::Dtd`]): no DTD is read, so
//!   no external entity is fetched and no entity is expanded (billion laughs, XXE).
//! - Only the five predefined entities and numeric character references are expanded;
//!   any other reference makes the document unparseable.
//! - Nesting is bounded ([`MAX_DEPTH`]), as is the element count ([`MAX_ELEMENTS`]); the
//!   body itself is already bounded by the HTTP client (1 MiB).
//! - The document must be well formed: one root, every element closed, no text outside it.

use std::borrow::Cow;

use quick_xml::XmlVersion;
use quick_xml::events::{BytesRef, BytesStart, Event};
use quick_xml::name::ResolveResult;
use quick_xml::reader::NsReader;

/// The SOAP 1.1 envelope namespace.
pub const SOAP_ENV: &str = "http://schemas.xmlsoap.org/soap/envelope/";

/// Deepest element nesting accepted.
pub const MAX_DEPTH: usize = 64;
/// Most elements accepted in one document.
pub const MAX_ELEMENTS: usize = 20_000;

/// Why a body could not be read as XML.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum XmlError {
    /// The body carries a document type declaration; refused unread.
    Dtd,
    /// Not one well-formed UTF-8 XML document within our bounds.
    Malformed,
    /// Nothing but whitespace.
    Empty,
}

impl XmlError {
    /// The evidence label (`dtd_refused`, `unparseable`, `empty_body`).
    pub fn detail(self) -> &'static str {
        match self {
            XmlError::Dtd => "dtd_refused",
            XmlError::Malformed => "unparseable",
            XmlError::Empty => "empty_body",
        }
    }
}

/// One element: its namespace URI (`None` when unqualified), local name, unprefixed
/// attributes (unescaped), direct text (unescaped, concatenated) and children.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Element {
    pub namespace: Option<String>,
    pub name: String,
    pub attributes: Vec<(String, String)>,
    pub text: String,
    pub children: Vec<Element>,
}

impl Element {
    /// Whether this element is `{namespace}name`; `None` matches only unqualified names.
    pub fn is(&self, namespace: Option<&str>, name: &str) -> bool {
        self.name == name && self.namespace.as_deref() == namespace
    }

    /// The first child `{namespace}name`.
    pub fn child(&self, namespace: Option<&str>, name: &str) -> Option<&Element> {
        self.children.iter().find(|c| c.is(namespace, name))
    }

    /// The first child with this local name, whatever its namespace.
    pub fn child_any_ns(&self, name: &str) -> Option<&Element> {
        self.children.iter().find(|c| c.name == name)
    }

    /// Follows a path of children, all in `namespace`.
    pub fn path(&self, namespace: Option<&str>, names: &[&str]) -> Option<&Element> {
        names.iter().try_fold(self, |element, name| element.child(namespace, name))
    }

    /// An unprefixed attribute's value.
    pub fn attribute(&self, name: &str) -> Option<&str> {
        self.attributes.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    /// The first descendant (depth first, self included) `{namespace}name`.
    pub fn find(&self, namespace: Option<&str>, name: &str) -> Option<&Element> {
        if self.is(namespace, name) {
            return Some(self);
        }
        self.children.iter().find_map(|c| c.find(namespace, name))
    }

    /// The trimmed text, `None` when empty.
    pub fn trimmed_text(&self) -> Option<&str> {
        Some(self.text.trim()).filter(|t| !t.is_empty())
    }
}

/// Escapes text for an XML attribute value or element content (`<`, `>`, `&`, `'`, `"`).
pub fn escape(text: &str) -> Cow<'_, str> {
    quick_xml::escape::escape(text)
}

/// Whether the body mentions a document type declaration anywhere (ASCII case-insensitive).
pub fn has_doctype(body: &[u8]) -> bool {
    const NEEDLE: &[u8] = b"<!doctype";
    body.windows(NEEDLE.len()).any(|w| w.eq_ignore_ascii_case(NEEDLE))
}

/// Parses one XML document into its root [`Element`], by the rules in the module docs.
pub fn parse(body: &[u8]) -> Result<Element, XmlError> {
    if has_doctype(body) {
        return Err(XmlError::Dtd);
    }
    let text = std::str::from_utf8(body).map_err(|_| XmlError::Malformed)?;
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    if text.trim().is_empty() {
        return Err(XmlError::Empty);
    }
    let mut reader = NsReader::from_str(text);
    let config = reader.config_mut();
    config.check_end_names = true;
    config.expand_empty_elements = false;

    // Open elements, innermost last. Children are attached when their parent's end is read.
    let mut stack: Vec<Element> = Vec::new();
    let mut root: Option<Element> = None;
    let mut elements = 0usize;
    loop {
        let (namespace, event) = reader.read_resolved_event().map_err(|_| XmlError::Malformed)?;
        let namespace = match namespace {
            ResolveResult::Bound(ns) => Some(ns.into_inner().to_owned()),
            ResolveResult::Unbound => None,
            ResolveResult::Unknown(_) => return Err(XmlError::Malformed),
        };
        match event {
            // A second root.
            Event::Start(_) | Event::Empty(_) if root.is_some() => return Err(XmlError::Malformed),
            Event::Start(start) => {
                elements += 1;
                if elements > MAX_ELEMENTS || stack.len() >= MAX_DEPTH {
                    return Err(XmlError::Malformed);
                }
                stack.push(open(namespace, &start)?);
            }
            Event::Empty(start) => {
                elements += 1;
                if elements > MAX_ELEMENTS || stack.len() >= MAX_DEPTH {
                    return Err(XmlError::Malformed);
                }
                let element = open(namespace, &start)?;
                attach(&mut stack, &mut root, element);
            }
            Event::End(_) => {
                let element = stack.pop().ok_or(XmlError::Malformed)?;
                attach(&mut stack, &mut root, element);
            }
            Event::Text(t) => push_text(&mut stack, &t.xml10_content())?,
            Event::CData(c) => push_text(&mut stack, &c.xml10_content())?,
            Event::GeneralRef(r) => {
                let resolved = resolve_reference(&r)?;
                push_text(&mut stack, &resolved)?;
            }
            Event::DocType(_) => return Err(XmlError::Dtd),
            Event::Decl(_) | Event::PI(_) | Event::Comment(_) => {}
            Event::Eof => break,
        }
    }
    if !stack.is_empty() {
        return Err(XmlError::Malformed);
    }
    root.ok_or(XmlError::Malformed)
}

/// A new element from its start tag: local name, namespace and unprefixed attributes.
fn open(namespace: Option<String>, start: &BytesStart<'_>) -> Result<Element, XmlError> {
    let mut attributes = Vec::new();
    for attribute in start.attributes() {
        let attribute = attribute.map_err(|_| XmlError::Malformed)?;
        let key = attribute.key.into_inner();
        if key.contains(':') || key == "xmlns" {
            continue;
        }
        let value = attribute.normalized_value(XmlVersion::Implicit1_0).map_err(|_| XmlError::Malformed)?;
        attributes.push((key.to_owned(), value.into_owned()));
    }
    Ok(Element {
        namespace,
        name: start.local_name().into_inner().to_owned(),
        attributes,
        text: String::new(),
        children: Vec::new(),
    })
}

/// The text of a predefined entity or numeric character reference; anything else is an
/// undeclared entity, so the document is malformed.
fn resolve_reference(reference: &BytesRef<'_>) -> Result<String, XmlError> {
    if reference.is_char_ref() {
        return match reference.resolve_char_ref() {
            Ok(Some(c)) => Ok(c.to_string()),
            _ => Err(XmlError::Malformed),
        };
    }
    quick_xml::escape::resolve_predefined_entity(reference).map(str::to_owned).ok_or(XmlError::Malformed)
}

/// Adds text to the innermost open element; non-whitespace text outside the root is
/// malformed.
fn push_text(stack: &mut [Element], text: &str) -> Result<(), XmlError> {
    match stack.last_mut() {
        Some(element) => {
            element.text.push_str(text);
            Ok(())
        }
        None if text.trim().is_empty() => Ok(()),
        None => Err(XmlError::Malformed),
    }
}

fn attach(stack: &mut [Element], root: &mut Option<Element>, element: Element) {
    match stack.last_mut() {
        Some(parent) => parent.children.push(element),
        None => *root = Some(element),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn elements_are_matched_by_namespace_and_local_name() {
        let doc = r#"<a:Root xmlns:a="urn:a" xmlns="urn:d" attr="x &amp; y" a:prefixed="no"><Child>t<![CDATA[<c>]]>&#65;</Child><a:Other/></a:Root>"#;
        let root = parse(doc.as_bytes()).expect("parses");
        assert!(root.is(Some("urn:a"), "Root"));
        assert!(!root.is(None, "Root"));
        assert_eq!(root.attribute("attr"), Some("x & y"));
        assert_eq!(root.attribute("prefixed"), None, "prefixed attributes are not read");
        let child = root.child(Some("urn:d"), "Child").expect("default namespace child");
        assert_eq!(child.text, "t<c>A");
        assert!(root.child(Some("urn:a"), "Other").is_some());
        assert!(root.child(None, "Child").is_none());
        assert!(root.child_any_ns("Child").is_some());
        assert!(root.find(Some("urn:a"), "Other").is_some());
    }

    #[test]
    fn refusals() {
        assert_eq!(parse(b"<!DOCTYPE x><x/>"), Err(XmlError::Dtd));
        assert_eq!(parse(b"<x/><!DocType y>"), Err(XmlError::Dtd));
        assert_eq!(parse(b"<x>&ent;</x>"), Err(XmlError::Malformed));
        assert_eq!(parse(b"<x a=\"&ent;\"/>"), Err(XmlError::Malformed));
        assert_eq!(parse(b"<x/><y/>"), Err(XmlError::Malformed));
        assert_eq!(parse(b"<x>"), Err(XmlError::Malformed));
        assert_eq!(parse(b"<x></y>"), Err(XmlError::Malformed));
        assert_eq!(parse(b"<p:x/>"), Err(XmlError::Malformed));
        assert_eq!(parse(b"\xff<x/>"), Err(XmlError::Malformed));
        assert_eq!(parse(b" \n "), Err(XmlError::Empty));
        let deep = "<a>".repeat(MAX_DEPTH + 1) + &"</a>".repeat(MAX_DEPTH + 1);
        assert_eq!(parse(deep.as_bytes()), Err(XmlError::Malformed));
        let ok = "<a>".repeat(MAX_DEPTH) + &"</a>".repeat(MAX_DEPTH);
        assert!(parse(ok.as_bytes()).is_ok());
        let many = format!("<a>{}</a>", "<b/>".repeat(MAX_ELEMENTS));
        assert_eq!(parse(many.as_bytes()), Err(XmlError::Malformed));
        assert!(parse("\u{feff}<?xml version=\"1.0\"?><!-- c --><x/>\n".as_bytes()).is_ok());
    }

    #[test]
    fn escaping_round_trips() {
        let nasty = "a<b>&c\"d'e\r";
        let doc = format!("<x v=\"{}\">{}</x>", escape(nasty), escape(nasty));
        let root = parse(doc.as_bytes()).expect("parses");
        assert_eq!(root.attribute("v"), Some(nasty));
        assert_eq!(root.text, nasty);
    }
}
