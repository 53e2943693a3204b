//! Parsing `key = value` attribute arguments.

use proc_macro2::Span;
use syn::parse::{Parse, ParseStream};
use syn::punctuated::Punctuated;
use syn::spanned::Spanned;
use syn::{Expr, Ident, ItemFn, Token};

/// One `key = value` argument.
pub(crate) struct Arg {
    pub(crate) key: Ident,
    pub(crate) value: Expr,
}

impl Parse for Arg {
    fn parse(input: ParseStream<'_>) -> syn::Result<Self> {
        let key: Ident = input.parse()?;
        let _: Token![=] = input
            .parse()
            .map_err(|e| syn::Error::new(e.span(), format!("expected `{key} = <value>`")))?;
        let value: Expr = input.parse()?;
        Ok(Arg { key, value })
    }
}

/// A comma-separated list of arguments, rejecting duplicates.
pub(crate) fn parse_args(attr: proc_macro2::TokenStream) -> syn::Result<Vec<Arg>> {
    let args = syn::parse::Parser::parse2(Punctuated::<Arg, Token![,]>::parse_terminated, attr)?;
    let mut seen: Vec<String> = Vec::new();
    let mut out = Vec::new();
    for a in args {
        let k = a.key.to_string();
        if seen.contains(&k) {
            return Err(syn::Error::new(
                a.key.span(),
                format!("duplicate argument `{k}`"),
            ));
        }
        seen.push(k);
        out.push(a);
    }
    Ok(out)
}

/// The numeric value of a literal number expression (an integer or a float, optionally
/// negated).
pub(crate) fn number(e: &Expr) -> Option<f64> {
    match e {
        Expr::Lit(l) => match &l.lit {
            syn::Lit::Float(f) => f.base10_parse::<f64>().ok(),
            syn::Lit::Int(i) => i.base10_parse::<f64>().ok(),
            _ => None,
        },
        Expr::Unary(u) if matches!(u.op, syn::UnOp::Neg(_)) => number(&u.expr).map(|v| -v),
        Expr::Paren(p) => number(&p.expr),
        Expr::Group(g) => number(&g.expr),
        _ => None,
    }
}

/// An error at `span`.
pub(crate) fn err(span: Span, msg: impl std::fmt::Display) -> syn::Error {
    syn::Error::new(span, msg)
}

/// Parses an attribute's arguments and the `async fn` it is on; `not_async` is the error
/// for a function that is not `async`.
pub(crate) fn parse_async_fn(
    attr: proc_macro2::TokenStream,
    item: proc_macro2::TokenStream,
    not_async: &str,
) -> syn::Result<(Vec<Arg>, ItemFn)> {
    let args = parse_args(attr)?;
    let f: ItemFn = syn::parse2(item)?;
    if f.sig.asyncness.is_none() {
        return Err(err(f.sig.fn_token.span(), not_async));
    }
    Ok((args, f))
}
