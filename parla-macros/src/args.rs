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
        // (At the key: with nothing after it, the parser's error would span the whole
        // attribute.)
        let _: Token![=] = input
            .parse()
            .map_err(|_| syn::Error::new(key.span(), format!("expected `{key} = <value>`")))?;
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

/// A byte-size expression (a task's `memory`, a virtual GPU's budget) as a `u64`.
///
/// An unsuffixed integer literal takes its type from the literals around it and defaults to
/// `i32`, so `4 << 30` would overflow. Where the type of the expression (or of a shift's left
/// operand) comes from literals alone, its unsuffixed literals become `u64` literals, and the
/// expression needs no cast. Anything else (`SIZE`, `n * 1024`) keeps its own type and is
/// cast with `as u64`.
pub(crate) fn bytes(e: &Expr) -> proc_macro2::TokenStream {
    let mut e = e.clone();
    if as_u64(&mut e) {
        quote::quote!(#e)
    } else {
        quote::quote!((#e) as u64)
    }
}

/// Types `e` as `u64` where only literals decide its type; whether it now is `u64`.
fn as_u64(e: &mut Expr) -> bool {
    if literals_only(e) {
        suffix_u64(e);
        return true;
    }
    match e {
        Expr::Paren(p) => as_u64(&mut p.expr),
        Expr::Group(g) => as_u64(&mut g.expr),
        // A shift has the type of its left operand, whatever the right one is.
        Expr::Binary(b) if matches!(b.op, syn::BinOp::Shl(_) | syn::BinOp::Shr(_)) => {
            as_u64(&mut b.left)
        }
        _ => false,
    }
}

/// Whether `e` is integer arithmetic on integer literals that are unsuffixed or `u64`.
fn literals_only(e: &Expr) -> bool {
    match e {
        Expr::Lit(l) => matches!(&l.lit, syn::Lit::Int(i) if matches!(i.suffix(), "" | "u64")),
        Expr::Paren(p) => literals_only(&p.expr),
        Expr::Group(g) => literals_only(&g.expr),
        Expr::Unary(u) => literals_only(&u.expr),
        Expr::Binary(b) => {
            use syn::BinOp::*;
            matches!(
                b.op,
                Add(_)
                    | Sub(_)
                    | Mul(_)
                    | Div(_)
                    | Rem(_)
                    | BitAnd(_)
                    | BitOr(_)
                    | BitXor(_)
                    | Shl(_)
                    | Shr(_)
            ) && literals_only(&b.left)
                && literals_only(&b.right)
        }
        _ => false,
    }
}

/// Gives every unsuffixed integer literal in `e` (a [`literals_only`] expression) a `u64`
/// suffix.
fn suffix_u64(e: &mut Expr) {
    match e {
        Expr::Lit(l) => {
            if let syn::Lit::Int(i) = &mut l.lit
                && i.suffix().is_empty()
            {
                *i = syn::LitInt::new(&format!("{i}u64"), i.span());
            }
        }
        Expr::Paren(p) => suffix_u64(&mut p.expr),
        Expr::Group(g) => suffix_u64(&mut g.expr),
        Expr::Unary(u) => suffix_u64(&mut u.expr),
        Expr::Binary(b) => {
            suffix_u64(&mut b.left);
            suffix_u64(&mut b.right);
        }
        _ => {}
    }
}
