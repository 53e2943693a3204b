//! The body of an `async fn` moved into an `async` block, keeping what the function's
//! declared return type did for it.
//!
//! An `async` block infers its output from its first `return` or its tail, with no type
//! to coerce to, where an `async fn` coerces both to its declared type (`return
//! Box::new(1)` in a function returning `Box<dyn Display>`, `return v` of a `&[T; 3]` in
//! one returning `&[T]`). So each `return` of the body gets the declared type, and so does
//! its value.

use proc_macro2::TokenStream;
use quote::{quote, quote_spanned};
use syn::spanned::Spanned;
use syn::visit::Visit;
use syn::visit_mut::VisitMut;
use syn::{Block, Expr, Item, ReturnType, Type};

/// The tokens of an `async move` block's body that runs `block` and has the value of type
/// `output`, as `block` in an `async fn` returning `output` would.
///
/// For an output that names `impl Trait` (which neither a `let` nor a call can name), the
/// block is used as it is.
pub(crate) fn typed(mut block: Block, output: &ReturnType) -> TokenStream {
    let (ty, span) = match output {
        ReturnType::Default => (quote!(()), proc_macro2::Span::call_site()),
        ReturnType::Type(_, t) if names_impl_trait(t) => return quote!(#block),
        ReturnType::Type(_, t) => (quote!(#t), t.span()),
    };
    let mut returns = Returns(0);
    returns.visit_block_mut(&mut block);
    // The returns' values go through a closure taking the declared type, defined before
    // the body: the type's names resolve where the signature's do, not among the body's
    // own items (`use std::io::Error;` in a function returning the crate's `Error`).
    // (At the declared type: a mismatch's note points there.)
    let coerce = (returns.0 > 0).then(|| {
        quote_spanned! {span=>
            let __parla_return = |__parla_value: #ty| -> #ty { __parla_value };
        }
    });
    // (The allows: a body that is a `return` alone is a diverging initializer to clippy;
    // a body that never returns makes the code after it unreachable, which is the
    // expansion's, not the user's code - allowed on that statement alone, so the lint
    // still reports unreachable code inside the body.)
    quote! {{
        #coerce
        #[allow(clippy::diverging_sub_expression)]
        let __parla_out: #ty = #block;
        #[allow(unreachable_code)]
        let __parla_ret = __parla_out;
        __parla_ret
    }}
}

/// Whether `t` names `impl Trait` anywhere (`impl Display`, `Vec<impl Display>`).
fn names_impl_trait(t: &Type) -> bool {
    struct Find(bool);
    impl Visit<'_> for Find {
        fn visit_type_impl_trait(&mut self, _: &syn::TypeImplTrait) {
            self.0 = true;
        }
    }
    let mut f = Find(false);
    f.visit_type(t);
    f.0
}

/// Gives the value of each `return` of a body the declared type: `return v` becomes
/// `return __parla_return(v)` (see [`typed`]), where `v` coerces, and a mismatch is
/// reported at `v`. The `return`s of closures, `async` blocks and items inside the body
/// are theirs and stay as they are; those a macro in the body expands to are not seen
/// (they coerce only where the type needs no coercion). Counts the returns it changed.
struct Returns(usize);

impl VisitMut for Returns {
    fn visit_expr_mut(&mut self, e: &mut Expr) {
        match e {
            Expr::Closure(_) | Expr::Async(_) => {}
            Expr::Return(r) => {
                if let Some(v) = r.expr.as_mut() {
                    self.visit_expr_mut(v);
                    let inner = std::mem::replace(&mut **v, Expr::Verbatim(TokenStream::new()));
                    **v = Expr::Verbatim(quote_spanned!(inner.span()=> __parla_return(#inner)));
                    self.0 += 1;
                }
            }
            _ => syn::visit_mut::visit_expr_mut(self, e),
        }
    }

    fn visit_item_mut(&mut self, _: &mut Item) {}
}
