//! `#[parla::specialize]` and `#[parla::variant(f, arch)]`: function variants.
//!
//! `#[specialize]` on `fn f(a: A) -> R` emits, beside `f`, a marker type
//! `__parla_specialized_f` and an alias `__parla_signature_f = fn(A) -> R`; `f` asks the
//! runtime for the architecture to dispatch on and calls the variant registered for it, if
//! any, else runs its own body. `#[variant(f, gpu)]` on `fn g(a: A) -> R` keeps `g` and
//! registers it in `f`'s slot for `gpu` (an implementation of `parla::variants::HasVariant`),
//! checking at compile time that `g`'s signature is `f`'s.

use proc_macro2::{Span, TokenStream};
use quote::{format_ident, quote, quote_spanned};
use syn::parse::{Parse, ParseStream};
use syn::spanned::Spanned;
use syn::{
    FnArg, GenericParam, Ident, ItemFn, Pat, Path, ReturnType, Signature, Token, Type, visit::Visit,
};

use crate::args::err;

/// The marker type of specialized function `name`.
fn marker(name: &Ident) -> Ident {
    format_ident!("__parla_specialized_{}", name, span = name.span())
}

/// The signature alias of specialized function `name`.
fn signature_alias(name: &Ident) -> Ident {
    format_ident!("__parla_signature_{}", name, span = name.span())
}

/// The constant that says specialized function `name` is one: a variant names it first, so
/// that a variant of a function without `#[parla::specialize]` fails with an error naming
/// what to do ("cannot find value `mark_f_with_parla_specialize`").
fn check(name: &Ident) -> Ident {
    format_ident!("mark_{}_with_parla_specialize", name, span = name.span())
}

/// Finds `impl Trait` in a type (not allowed in a function pointer type).
struct ImplTrait(Option<Span>);

impl<'a> Visit<'a> for ImplTrait {
    fn visit_type_impl_trait(&mut self, t: &'a syn::TypeImplTrait) {
        self.0.get_or_insert(t.span());
    }
}

/// Checks that `sig` can be called through a function pointer, and returns its argument
/// types and the `fn(..) -> R` type (higher-ranked over the function's lifetimes).
fn pointer_type(sig: &Signature, what: &str) -> syn::Result<(Vec<Type>, TokenStream)> {
    if let Some(a) = &sig.asyncness {
        return Err(err(
            a.span(),
            format!("{what} cannot be `async`: variants are called through function pointers"),
        ));
    }
    if let Some(v) = &sig.variadic {
        return Err(err(v.span(), format!("{what} cannot be variadic")));
    }
    let mut lifetimes = Vec::new();
    for p in &sig.generics.params {
        match p {
            GenericParam::Lifetime(l) => lifetimes.push(l.lifetime.clone()),
            other => {
                return Err(err(
                    other.span(),
                    format!(
                        "{what} cannot have type or const parameters: a variant is found by its signature, which must be one concrete function type"
                    ),
                ));
            }
        }
    }
    if let Some(w) = &sig.generics.where_clause {
        return Err(err(
            w.span(),
            format!("{what} cannot have a `where` clause"),
        ));
    }
    let mut types = Vec::new();
    for a in &sig.inputs {
        match a {
            FnArg::Receiver(r) => {
                return Err(err(
                    r.span(),
                    format!("{what} cannot take `self`: variants are free functions"),
                ));
            }
            FnArg::Typed(t) => types.push((*t.ty).clone()),
        }
    }
    let ret = match &sig.output {
        ReturnType::Default => quote!(()),
        ReturnType::Type(_, t) => quote!(#t),
    };
    let mut finder = ImplTrait(None);
    for t in &types {
        finder.visit_type(t);
    }
    if let ReturnType::Type(_, t) = &sig.output {
        finder.visit_type(t);
    }
    if let Some(span) = finder.0 {
        return Err(err(
            span,
            format!(
                "{what} cannot use `impl Trait`: variants are called through function pointers"
            ),
        ));
    }
    let unsafety = &sig.unsafety;
    let abi = &sig.abi;
    // Spanned at the signature, so that errors about it point there.
    let span = sig.ident.span();
    let binder = if lifetimes.is_empty() {
        quote!()
    } else {
        quote_spanned!(span=> for<#(#lifetimes),*>)
    };
    Ok((
        types.clone(),
        quote_spanned!(span=> #binder #unsafety #abi fn(#(#types),*) -> #ret),
    ))
}

pub(crate) fn expand_specialize(attr: TokenStream, item: TokenStream) -> syn::Result<TokenStream> {
    if !attr.is_empty() {
        return Err(err(
            attr.span(),
            "#[parla::specialize] takes no arguments: attach variants with #[parla::variant(function, gpu)]",
        ));
    }
    let f: ItemFn = syn::parse2(item)?;
    let (types, fn_type) = pointer_type(&f.sig, "a specialized function")?;
    let ItemFn {
        attrs,
        vis,
        sig,
        block,
    } = f;
    let name = &sig.ident;
    let marker = marker(name);
    let alias = signature_alias(name);
    let check = check(name);
    let args: Vec<Ident> = (0..types.len())
        .map(|i| format_ident!("__parla_arg{}", i))
        .collect();
    let pats: Vec<Box<Pat>> = sig
        .inputs
        .iter()
        .filter_map(|a| match a {
            FnArg::Typed(t) => Some(t.pat.clone()),
            FnArg::Receiver(_) => None,
        })
        .collect();
    let mut new_sig = sig.clone();
    for (a, id) in new_sig.inputs.iter_mut().zip(&args) {
        if let FnArg::Typed(t) = a {
            *t.pat = syn::parse_quote!(#id);
        }
    }
    let slot = |arch: &str| {
        let arch = Ident::new(arch, Span::call_site());
        quote!((&&::parla::variants::Slot::<#marker, ::parla::variants::#arch, #alias>::NEW).variant())
    };
    let (gpu, cpu) = (slot("Gpu"), slot("Cpu"));
    let call_unsafe = sig.unsafety.is_some();
    let call = if call_unsafe {
        quote!(unsafe { variant(#(#args),*) })
    } else {
        quote!(variant(#(#args),*))
    };
    Ok(quote! {
        #[doc(hidden)]
        #[allow(non_upper_case_globals, dead_code)]
        #vis const #check: () = ();
        #[doc(hidden)]
        #[allow(non_camel_case_types)]
        #vis struct #marker;
        #[doc(hidden)]
        #[allow(non_camel_case_types)]
        #vis type #alias = #fn_type;
        #(#attrs)*
        // (The default body follows the dispatch as a block: a one-expression body such as
        // `{ x }` would otherwise warn that its braces are unnecessary.)
        #[allow(unused_braces)]
        #vis #new_sig {
            if let ::core::option::Option::Some(arch) = ::parla::variants::arch() {
                #[allow(unused_imports)]
                use ::parla::variants::{HasVariant as _, NoVariant as _};
                let variant: ::core::option::Option<#alias> = match arch {
                    ::parla::variants::Arch::Gpu => #gpu,
                    ::parla::variants::Arch::Cpu => #cpu,
                };
                if let ::core::option::Option::Some(variant) = variant {
                    return #call;
                }
            }
            let (#(#pats,)*) = (#(#args,)*);
            #block
        }
    })
}

/// `#[variant(function, arch)]`.
struct VariantArgs {
    function: Path,
    arch: Ident,
}

impl Parse for VariantArgs {
    fn parse(input: ParseStream<'_>) -> syn::Result<Self> {
        let function: Path = input.parse().map_err(|e| {
            syn::Error::new(
                e.span(),
                "expected #[parla::variant(function, gpu)]: the specialized function, then the architecture",
            )
        })?;
        let comma: syn::Result<Token![,]> = input.parse();
        if comma.is_err() {
            return Err(err(
                function.span(),
                "expected #[parla::variant(function, gpu)]: name the architecture after the function",
            ));
        }
        let arch: Ident = input.parse()?;
        let _: Option<Token![,]> = input.parse()?;
        if !input.is_empty() {
            return Err(err(
                input.span(),
                "unexpected argument after the architecture",
            ));
        }
        Ok(VariantArgs { function, arch })
    }
}

pub(crate) fn expand_variant(attr: TokenStream, item: TokenStream) -> syn::Result<TokenStream> {
    let VariantArgs { function, arch } = syn::parse2(attr)?;
    let arch_type = match arch.to_string().as_str() {
        "gpu" => quote_spanned!(arch.span()=> ::parla::variants::Gpu),
        "cpu" => quote_spanned!(arch.span()=> ::parla::variants::Cpu),
        other => {
            return Err(err(
                arch.span(),
                format!("unknown architecture `{other}`: a variant is for `cpu` or `gpu`"),
            ));
        }
    };
    let f: ItemFn = syn::parse2(item)?;
    let (_, fn_type) = pointer_type(&f.sig, "a variant")?;
    let Some(last) = function.segments.last() else {
        return Err(err(
            function.span(),
            "expected the specialized function's name",
        ));
    };
    let target = last.ident.clone();
    let with_last = |id: Ident| {
        let mut p = function.clone();
        if let Some(l) = p.segments.last_mut() {
            l.ident = id;
            l.arguments = syn::PathArguments::None;
        }
        p
    };
    let marker = with_last(marker(&target));
    let alias = with_last(signature_alias(&target));
    let check = with_last(check(&target));
    let name = &f.sig.ident;
    let once = format_ident!(
        "{}_has_more_than_one_{}_variant",
        target,
        arch,
        span = arch.span()
    );
    // The signature check points at the variant's signature; a second variant for one
    // architecture, at its architecture.
    let sig_span = name.span();
    let mut sig_alias = alias.clone();
    if let Some(l) = sig_alias.segments.last_mut() {
        l.ident = Ident::new(&l.ident.to_string(), sig_span);
    }
    let signature = quote_spanned!(sig_span=>
        ::parla::variants::VariantOf::<#sig_alias>::signature(#name as #fn_type)
    );
    let a = arch.span();
    Ok(quote_spanned! {a=>
        const _: () = #check;
        #f
        #[doc(hidden)]
        #[allow(non_upper_case_globals, dead_code)]
        const #once: () = ();
        #[doc(hidden)]
        impl ::parla::variants::HasVariant<#marker>
            for &::parla::variants::Slot<#marker, #arch_type, #alias>
        {
            type Signature = #alias;
            #[inline(always)]
            fn variant(&self) -> ::core::option::Option<#alias> {
                ::core::option::Option::Some(#signature)
            }
        }
    })
}
