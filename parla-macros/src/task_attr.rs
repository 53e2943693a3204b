//! `#[task(...)]` on an `async fn`.

use proc_macro2::TokenStream;
use quote::{quote, quote_spanned};
use syn::spanned::Spanned;
use syn::{Expr, FnArg, ItemFn, ReturnType};

use crate::args::{bytes, err, number, parse_async_fn};

/// `cpu`, `gpu`, `gpu(i)` or a list of these, as `::parla::Placement` values.
fn placements(e: &Expr) -> syn::Result<Vec<TokenStream>> {
    match e {
        Expr::Array(a) => {
            if a.elems.is_empty() {
                return Err(err(
                    a.span(),
                    "placement list is empty: give at least one of cpu, gpu, gpu(i)",
                ));
            }
            let mut out = Vec::new();
            for el in &a.elems {
                out.extend(placements(el)?);
            }
            Ok(out)
        }
        Expr::Path(p) if p.path.is_ident("cpu") => {
            Ok(vec![quote_spanned!(p.span()=> ::parla::Placement::Cpu)])
        }
        Expr::Path(p) if p.path.is_ident("gpu") => {
            Ok(vec![quote_spanned!(p.span()=> ::parla::Placement::AnyGpu)])
        }
        Expr::Call(c) if matches!(&*c.func, Expr::Path(p) if p.path.is_ident("gpu")) => {
            if c.args.len() != 1 {
                return Err(err(c.span(), "gpu(i) takes one GPU index"));
            }
            let i = &c.args[0];
            Ok(vec![quote_spanned!(c.span()=> ::parla::Placement::Gpu(#i))])
        }
        other => Err(err(
            other.span(),
            "unknown placement: expected cpu, gpu, gpu(i), or a list like [cpu, gpu]",
        )),
    }
}

/// Where type `ty` borrows, if it does: a reference or a lifetime other than `'static`
/// anywhere in it (`&str`, `Vec<&str>`, `(u32, &str)`, `Cow<'a, str>`,
/// `Box<dyn Display + '_>`). References that a function type or an `Fn` bound takes as
/// arguments or returns are not borrows of the type (`fn(&str)`, `Box<dyn Fn(&str)>`).
fn borrow_in(ty: &syn::Type) -> Option<proc_macro2::Span> {
    use syn::visit::Visit;
    struct Finder(Option<proc_macro2::Span>);
    impl<'ast> Visit<'ast> for Finder {
        fn visit_type_reference(&mut self, r: &'ast syn::TypeReference) {
            if self.0.is_some() {
                return;
            }
            if r.lifetime.as_ref().is_none_or(|l| l.ident != "static") {
                self.0 = Some(r.span());
                return;
            }
            syn::visit::visit_type_reference(self, r);
        }
        fn visit_lifetime(&mut self, l: &'ast syn::Lifetime) {
            if self.0.is_none() && l.ident != "static" {
                self.0 = Some(l.span());
            }
        }
        // Higher-ranked: `for<'a> Fn(&'a str)`, `fn(&str)`, `Fn(&str) -> &str`.
        fn visit_bound_lifetimes(&mut self, _: &'ast syn::BoundLifetimes) {}
        fn visit_type_bare_fn(&mut self, _: &'ast syn::TypeBareFn) {}
        fn visit_parenthesized_generic_arguments(
            &mut self,
            _: &'ast syn::ParenthesizedGenericArguments,
        ) {
        }
    }
    let mut f = Finder(None);
    f.visit_type(ty);
    f.0
}

pub(crate) fn expand(attr: TokenStream, item: TokenStream) -> syn::Result<TokenStream> {
    let (args, f) = parse_async_fn(
        attr,
        item,
        "#[task] goes on an `async fn`: the function body becomes the task's future",
    )?;
    if let Some(FnArg::Receiver(r)) = f.sig.inputs.first() {
        return Err(err(
            r.span(),
            "#[task] functions cannot take `self`: a task's future must own its data ('static)",
        ));
    }
    // A borrowed parameter would make the task's future borrow: say so here, rather than
    // leave the compiler's "borrowed data escapes" on the attribute.
    for a in &f.sig.inputs {
        if let FnArg::Typed(t) = a
            && let Some(span) = borrow_in(&t.ty)
        {
            return Err(err(
                span,
                "#[task] parameters cannot borrow: a task's future must own its data ('static); \
                 take an owned value (`String`, `Vec<T>`, `Arc<T>`) or clone it at the call",
            ));
        }
    }
    let params: Vec<String> = f
        .sig
        .inputs
        .iter()
        .filter_map(|a| match a {
            FnArg::Typed(t) => match &*t.pat {
                syn::Pat::Ident(i) => Some(i.ident.to_string()),
                _ => None,
            },
            FnArg::Receiver(_) => None,
        })
        .collect();
    let mut calls = Vec::new();
    // Data accesses: each named parameter is taken as data before the body moves it.
    let mut takes = Vec::new();
    for a in &args {
        let key = a.key.to_string();
        let v = &a.value;
        match key.as_str() {
            "placement" => {
                let ps = placements(v)?;
                calls.push(quote_spanned!(a.key.span()=> .placement([#(#ps),*])));
            }
            "vcus" => {
                let n = number(v).ok_or_else(|| {
                    err(
                        v.span(),
                        "vcus must be a number literal between 0.0 and 1.0, like `vcus = 0.125`; \
                         for a share computed in code (`1.0 / 8.0`), call `.vcus(..)` on the \
                         builder the function returns",
                    )
                })?;
                if !(0.0..=1.0).contains(&n) {
                    return Err(err(
                        v.span(),
                        format!(
                            "vcus = {n} is out of range: a task uses between 0.0 and 1.0 of a device"
                        ),
                    ));
                }
                let lit = proc_macro2::Literal::f64_suffixed(n);
                calls.push(quote_spanned!(a.key.span()=> .vcus(#lit)));
            }
            "memory" => {
                if let Expr::Lit(l) = v
                    && !matches!(l.lit, syn::Lit::Int(_) | syn::Lit::Float(_))
                {
                    return Err(err(
                        v.span(),
                        "memory is a number of bytes, an integer expression like `memory = 1 << 30`",
                    ));
                }
                if number(v).is_some_and(|n| n < 0.0) {
                    return Err(err(
                        v.span(),
                        "memory is a number of bytes and cannot be negative",
                    ));
                }
                if let Some(n) = number(v).filter(|n| n.fract() != 0.0) {
                    return Err(err(
                        v.span(),
                        format!(
                            "memory = {n} is not a whole number of bytes: write `memory = {}` or `memory = {}`",
                            n.floor(),
                            n.ceil()
                        ),
                    ));
                }
                let v = bytes(v);
                // Evaluated before the body moves the parameters it may use
                // (`memory = a.len() * 8`).
                takes.push(quote_spanned!(v.span()=> let __parla_memory: u64 = #v;));
                calls.push(quote_spanned!(a.key.span()=> .memory(__parla_memory)));
            }
            "reads" | "writes" | "reads_writes" => {
                let names: Vec<&Expr> = match v {
                    Expr::Array(arr) => arr.elems.iter().collect(),
                    one => vec![one],
                };
                for n in names {
                    let Expr::Path(p) = n else {
                        return Err(err(
                            n.span(),
                            format!(
                                "{key} names parameters of the function, like `{key} = [a, b]`"
                            ),
                        ));
                    };
                    let Some(id) = p.path.get_ident() else {
                        return Err(err(
                            p.span(),
                            format!("{key} names parameters of the function"),
                        ));
                    };
                    if !params.contains(&id.to_string()) {
                        return Err(err(
                            id.span(),
                            format!(
                                "`{id}` is not a parameter of this function: {key} names the function's data parameters"
                            ),
                        ));
                    }
                    let tmp = quote::format_ident!("__parla_data_{}", takes.len());
                    // (A handle of its own: the body moves the parameter.)
                    takes.push(
                        quote_spanned!(id.span()=> let #tmp = ::core::clone::Clone::clone(&#id);),
                    );
                    let method = quote::format_ident!("{}", key);
                    calls.push(quote_spanned!(a.key.span()=> .#method(&#tmp)));
                }
            }
            _ => {
                return Err(err(
                    a.key.span(),
                    format!(
                        "unknown #[task] argument `{key}`: expected placement, vcus, memory, reads, writes or reads_writes"
                    ),
                ));
            }
        }
    }

    let ItemFn {
        attrs,
        vis,
        sig,
        block,
    } = f;
    let out_ty = match &sig.output {
        ReturnType::Default => quote!(()),
        ReturnType::Type(_, t) => quote!(#t),
    };
    let mut new_sig = sig.clone();
    new_sig.asyncness = None;
    new_sig.output = syn::parse_quote!(
        -> ::parla::TaskBuilder<impl ::core::future::Future<Output = #out_ty> + ::core::marker::Send + 'static>
    );
    // (The body's value and its `return`s have the declared type, as an `async fn`'s do:
    // they coerce there, `Arc<Sq>` to `Arc<dyn Shape>`, `&mut T` to `&T`.)
    let body = crate::body::typed(*block, &sig.output);
    Ok(quote! {
        #(#attrs)*
        #[must_use = "a task does nothing until it is spawned or awaited"]
        #vis #new_sig {
            #(#takes)*
            ::parla::task(async move #body) #(#calls)*
        }
    })
}
