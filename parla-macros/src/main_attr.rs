//! `#[parla::main(...)]` on an `async fn`.

use proc_macro2::TokenStream;
use quote::{quote, quote_spanned};
use syn::spanned::Spanned;
use syn::{Expr, ItemFn, ReturnType, Type};

use crate::args::{bytes, err, parse_async_fn};

/// Default budget of a virtual GPU when only the count is given.
const VIRTUAL_GPU_BYTES: u64 = 16 << 30;

pub(crate) fn expand(attr: TokenStream, item: TokenStream) -> syn::Result<TokenStream> {
    let (args, f) = parse_async_fn(attr, item, "#[parla::main] goes on an `async fn`")?;
    if !f.sig.inputs.is_empty() {
        return Err(err(
            f.sig.inputs.span(),
            "#[parla::main] functions take no arguments",
        ));
    }
    let mut calls = Vec::new();
    for a in &args {
        let key = a.key.to_string();
        let v = &a.value;
        let s = a.key.span();
        match key.as_str() {
            "cpu_threads" => calls.push(quote_spanned!(s=> .cpu_threads(#v))),
            "streams_per_gpu" => calls.push(quote_spanned!(s=> .streams_per_gpu(#v))),
            "trace" => calls.push(quote_spanned!(s=> .trace(#v))),
            "virtual_gpus" => match v {
                Expr::Tuple(t) if t.elems.len() == 2 => {
                    let (n, m) = (&t.elems[0], bytes(&t.elems[1]));
                    calls.push(quote_spanned!(s=> .virtual_gpus(#n, #m)));
                }
                Expr::Tuple(t) => {
                    return Err(err(t.span(), "virtual_gpus = (count, bytes_each)"));
                }
                n => calls.push(quote_spanned!(s=> .virtual_gpus(#n, #VIRTUAL_GPU_BYTES))),
            },
            _ => {
                return Err(err(
                    s,
                    format!(
                        "unknown #[parla::main] argument `{key}`: expected cpu_threads, virtual_gpus, streams_per_gpu or trace"
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
    let mut new_sig = sig.clone();
    new_sig.asyncness = None;
    let run = match &sig.output {
        // `let` cannot name these types: return the value as it is, for `std` to report.
        ReturnType::Type(_, t) if matches!(**t, Type::ImplTrait(_) | Type::Never(_)) => {
            quote!(__parla_rt.block_on(async move #block))
        }
        output => {
            let ty = match output {
                ReturnType::Default => quote!(()),
                ReturnType::Type(_, t) => quote!(#t),
            };
            // (The body's value and its `return`s have the declared type, as in an
            // `async fn`: `return Err(Box::new(e))` coerces to `Box<dyn Error>`.)
            let body = crate::body::typed(*block, output);
            // An error is printed with its message (and sources), not its `Debug` form as
            // `std` would, once the runtime has shut down (and written its trace).
            // An error is reported as soon as `main` returns it, without waiting for the
            // tasks still running (a server's loop would keep it from ever showing): the
            // runtime's drop cancels them.
            let report = |out: TokenStream| {
                quote! {{
                    #[allow(unused_imports)]
                    use ::parla::__private::{
                        ReportDerefError as _, ReportDisplay as _, ReportOther as _,
                        ReportStdError as _,
                    };
                    (&&&&::parla::__private::MainOutput(#out)).parla_report()
                }}
            };
            let early = report(quote!(__parla_out));
            let last = report(quote!(&__parla_out));
            quote! {
                let __parla_out: #ty = __parla_rt.block_on_main(
                    async move #body,
                    |__parla_out: &#ty| #early.is_some(),
                );
                ::core::mem::drop(__parla_rt);
                if let ::core::option::Option::Some(__parla_report) = #last {
                    ::std::eprintln!("{__parla_report}");
                    ::std::process::exit(1);
                }
                __parla_out
            }
        }
    };
    Ok(quote! {
        #(#attrs)*
        #vis #new_sig {
            let __parla_rt = match ::parla::Runtime::builder() #(#calls)* .build() {
                ::core::result::Result::Ok(rt) => rt,
                ::core::result::Result::Err(e) => {
                    ::std::eprintln!("parla: cannot start the runtime: {e}");
                    ::std::process::exit(1)
                }
            };
            #run
        }
    })
}

/// The error, plus the function with its body stubbed out, so that the only error reported
/// is the macro's own (not a missing `main` as well).
pub(crate) fn with_stub(e: syn::Error, item: TokenStream) -> TokenStream {
    let err = e.to_compile_error();
    match syn::parse2::<ItemFn>(item) {
        Ok(f) => {
            let ItemFn {
                attrs, vis, sig, ..
            } = f;
            let mut sig = sig;
            sig.asyncness = None;
            // (Arguments the macro refused would also make `main`'s type wrong: a second
            // error for the same mistake.)
            if sig.ident == "main" {
                sig.inputs.clear();
            }
            quote! {
                #err
                #(#attrs)*
                #vis #sig { ::core::unreachable!() }
            }
        }
        Err(_) => err,
    }
}
