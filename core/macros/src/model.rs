//! The service model: a `#[courier::service]` trait parsed and checked once, which the
//! generators (`client`, `server`) read. Parsing also rewrites the trait as implementors see it.

use std::collections::HashMap;

use proc_macro2::{Span, TokenStream as TokenStream2};
use quote::{format_ident, quote, quote_spanned};
use syn::spanned::Spanned;
use syn::{
    Attribute, FnArg, Ident, ItemTrait, LitInt, Pat, ReturnType, TraitItem, TraitItemFn, Type,
};

/// The attribute's own options: `#[courier::service(id = …, version = …)]`.
#[derive(Default)]
pub(crate) struct ServiceOptions {
    pub(crate) id: Option<u32>,
    pub(crate) version: Option<u16>,
}

/// A service: the trait's names and ids, and its methods.
pub(crate) struct Service {
    /// The trait, rewritten: methods return `impl Future + Send`, and it is `Send + Sync +
    /// 'static`.
    pub(crate) item: ItemTrait,
    pub(crate) methods: Vec<Method>,
    /// `module_path!()::Trait`, as an expression.
    pub(crate) service_name: TokenStream2,
    /// The interface id, as an expression.
    pub(crate) interface: TokenStream2,
    pub(crate) version: u16,
    pub(crate) client_name: Ident,
    pub(crate) server_name: Ident,
}

pub(crate) struct Method {
    pub(crate) name: Ident,
    /// The id given with `#[courier(id = …)]`; otherwise it is derived from the name.
    pub(crate) explicit_id: Option<u32>,
    pub(crate) one_way: bool,
    /// `#[idempotent]`: calls are at-least-once.
    pub(crate) idempotent: bool,
    pub(crate) docs: Vec<Attribute>,
    /// Whether the first parameter is the call's `Context`.
    pub(crate) takes_context: bool,
    /// The arguments: name, the type that crosses the wire, and whether it is in-out (`&mut T`
    /// in the trait: sent, and the handler's final value sent back).
    pub(crate) args: Vec<(Ident, Type, bool)>,
    pub(crate) output: Type,
    pub(crate) span: Span,
}

impl Method {
    /// The method's id, as an expression.
    pub(crate) fn id(&self) -> TokenStream2 {
        match self.explicit_id {
            Some(id) => quote!(#id),
            None => {
                let name = self.name.to_string();
                quote!(::courier::ids::stable_id(#name))
            }
        }
    }

    /// The name of the stub's constant that describes the method (`ADD` for `add`).
    pub(crate) fn desc_const(&self) -> Ident {
        format_ident!("{}", self.name.to_string().to_uppercase())
    }

    /// The in-out (`&mut`) arguments.
    pub(crate) fn in_outs(&self) -> Vec<&(Ident, Type, bool)> {
        self.args.iter().filter(|(_, _, io)| *io).collect()
    }
}

impl Service {
    /// Parses and checks the trait.
    pub(crate) fn parse(options: ServiceOptions, mut item: ItemTrait) -> syn::Result<Service> {
        if !item.generics.params.is_empty() {
            return Err(syn::Error::new(
                item.generics.span(),
                "a courier service trait cannot be generic",
            ));
        }
        let mut methods = Vec::new();
        let mut seen: HashMap<u32, Ident> = HashMap::new();
        for trait_item in &mut item.items {
            let TraitItem::Fn(f) = trait_item else {
                return Err(syn::Error::new(
                    trait_item.span(),
                    "a courier service trait holds only `async fn` methods",
                ));
            };
            let method = parse_method(f)?;
            if let Some(id) = method.explicit_id {
                if let Some(other) = seen.insert(id, method.name.clone()) {
                    return Err(syn::Error::new(
                        method.span,
                        format!(
                            "methods `{other}` and `{}` have the same method id {id:#010x}; give \
                             one another id with #[courier(id = …)]",
                            method.name
                        ),
                    ));
                }
            }
            // The trait as implementors see it: `-> impl Future<Output = T> + Send`.
            let output = &method.output;
            f.sig.asyncness = None;
            f.sig.output = syn::parse_quote! {
                -> impl ::core::future::Future<Output = #output> + ::core::marker::Send
            };
            methods.push(method);
        }
        check_stub_names(&methods)?;
        let trait_name = item.ident.clone();
        let bare_name = trait_name.to_string();
        let service_name = quote!(::core::concat!(::core::module_path!(), "::", #bare_name));
        let interface = match options.id {
            Some(id) => quote!(#id),
            None => quote!(::courier::ids::stable_id(#service_name)),
        };
        item.supertraits
            .push(syn::parse_quote!(::core::marker::Send));
        item.supertraits
            .push(syn::parse_quote!(::core::marker::Sync));
        item.supertraits.push(syn::parse_quote!('static));
        if item.colon_token.is_none() {
            item.colon_token = Some(Default::default());
        }
        Ok(Service {
            item,
            methods,
            service_name,
            interface,
            version: options.version.unwrap_or(1),
            client_name: format_ident!("{}Client", trait_name),
            server_name: format_ident!("{}Server", trait_name),
        })
    }

    /// The trait's name.
    pub(crate) fn trait_name(&self) -> &Ident {
        &self.item.ident
    }

    /// Derived ids are computed by the core's `stable_id` in constants; a collision among them
    /// (or with an explicit one) stops the build there.
    pub(crate) fn distinct_ids(&self) -> Vec<TokenStream2> {
        let methods = &self.methods;
        let mut distinct = Vec::new();
        for (i, a) in methods.iter().enumerate() {
            for b in &methods[i + 1..] {
                if a.explicit_id.is_some() && b.explicit_id.is_some() {
                    continue; // checked while parsing, with a better span
                }
                let (ida, idb) = (a.id(), b.id());
                let message = format!(
                    "methods `{}` and `{}` have the same method id; give one another id with \
                     #[courier(id = …)]",
                    a.name, b.name
                );
                distinct.push(quote_spanned! {b.span=>
                    const _: () = ::core::assert!(#ida != #idb, #message);
                });
            }
        }
        distinct
    }

    /// Every argument and result must cross the wire: this points a missing serde derive at
    /// the type that lacks it.
    pub(crate) fn wire_type_checks(&self) -> TokenStream2 {
        let serde = quote!(::courier::__private::serde);
        let checks = self.methods.iter().flat_map(|m| {
            let args =
                m.args
                    .iter()
                    .filter(|(_, ty, _)| !is_callback(ty))
                    .map(move |(_, ty, _)| {
                        quote_spanned! {ty.span()=>
                            __courier_is_wire_type::<#ty>();
                        }
                    });
            let out = &m.output;
            let ret = quote_spanned! {out.span()=>
                __courier_is_wire_type::<#out>();
            };
            args.chain(std::iter::once(ret))
        });
        quote! {
            // Every argument and result must cross the wire: this points a missing serde derive at
            // the type that lacks it.
            const _: () = {
                fn __courier_is_wire_type<T>()
                where
                    T: #serde::Serialize + #serde::de::DeserializeOwned + ::core::marker::Send + 'static,
                {
                }
                #[allow(dead_code)]
                fn __courier_check_types() {
                    #(#checks)*
                }
            };
        }
    }
}

/// Whether `ty` is `Callback<T>`: sent as an id, delivered to by calls back to the caller.
pub(crate) fn is_callback(ty: &Type) -> bool {
    match ty {
        Type::Path(p) => p.path.segments.last().is_some_and(|s| {
            s.ident == "Callback" && matches!(s.arguments, syn::PathArguments::AngleBracketed(_))
        }),
        _ => false,
    }
}

fn is_context(ty: &Type) -> bool {
    match ty {
        Type::Path(p) => p
            .path
            .segments
            .last()
            .is_some_and(|s| s.ident == "Context" && s.arguments.is_empty()),
        _ => false,
    }
}

/// Reads and removes Courier's own attributes from a method: `#[oneway]`, `#[idempotent]`,
/// `#[courier(id = …)]`.
fn take_method_attrs(method: &mut TraitItemFn) -> syn::Result<(bool, bool, Option<u32>)> {
    let mut one_way = false;
    let mut idempotent = None;
    let mut id = None;
    let mut error = None;
    method.attrs.retain(|attr| {
        if attr.path().is_ident("oneway") {
            one_way = true;
            false
        } else if attr.path().is_ident("idempotent") {
            idempotent = Some(attr.path().span());
            false
        } else if attr.path().is_ident("courier") {
            let parsed = attr.parse_nested_meta(|meta| {
                if meta.path.is_ident("id") {
                    id = Some(meta.value()?.parse::<LitInt>()?.base10_parse()?);
                    Ok(())
                } else {
                    Err(meta.error("unknown option: expected `id = <u32>`"))
                }
            });
            if let Err(e) = parsed {
                error = Some(e);
            }
            false
        } else {
            true
        }
    });
    if let (true, Some(span)) = (one_way, idempotent) {
        return Err(syn::Error::new(
            span,
            "a #[oneway] call is never re-sent, so #[idempotent] means nothing on it; remove one",
        ));
    }
    match error {
        Some(e) => Err(e),
        None => Ok((one_way, idempotent.is_some(), id)),
    }
}

fn parse_method(method: &mut TraitItemFn) -> syn::Result<Method> {
    let (one_way, idempotent, explicit_id) = take_method_attrs(method)?;
    let sig = &method.sig;
    if ["new", "with_options", "client"].contains(&sig.ident.to_string().as_str()) {
        return Err(syn::Error::new(
            sig.ident.span(),
            format!(
                "`{}` is taken by the generated client stub; give the method another name",
                sig.ident
            ),
        ));
    }
    if sig.asyncness.is_none() {
        return Err(syn::Error::new(
            sig.fn_token.span(),
            format!(
                "courier service methods must be `async fn`; write `async fn {}`",
                sig.ident
            ),
        ));
    }
    if !sig.generics.params.is_empty() || sig.generics.where_clause.is_some() {
        return Err(syn::Error::new(
            sig.generics.span(),
            "courier service methods cannot be generic: the wire needs one concrete type per argument",
        ));
    }
    if method.default.is_some() {
        return Err(syn::Error::new(
            sig.ident.span(),
            "courier service methods cannot have a default body",
        ));
    }
    let mut inputs = sig.inputs.iter();
    match inputs.next() {
        Some(FnArg::Receiver(r)) if r.reference.is_some() && r.mutability.is_none() => {}
        _ => {
            return Err(syn::Error::new(
                sig.ident.span(),
                "courier service methods take `&self` first: a service is shared by every call",
            ))
        }
    }
    let mut takes_context = false;
    let mut args = Vec::new();
    for (i, input) in inputs.enumerate() {
        let FnArg::Typed(pt) = input else {
            return Err(syn::Error::new(input.span(), "unexpected receiver"));
        };
        let Pat::Ident(pat) = &*pt.pat else {
            return Err(syn::Error::new(
                pt.pat.span(),
                "courier service arguments must be plain names, like `count: u32`",
            ));
        };
        if i == 0 && is_context(&pt.ty) {
            takes_context = true;
            continue;
        }
        match &*pt.ty {
            Type::Reference(r) if r.mutability.is_some() => {
                if one_way {
                    return Err(syn::Error::new(
                        pt.ty.span(),
                        "a #[oneway] call has no reply to carry an in-out (`&mut`) parameter's \
                         value back: take it by value, or drop #[oneway]",
                    ));
                }
                args.push((pat.ident.clone(), (*r.elem).clone(), true));
            }
            Type::Reference(_) => {
                return Err(syn::Error::new(
                    pt.ty.span(),
                    "a `&T` parameter cannot cross the wire: the server gets its own copy. Take \
                     an owned type by value (`String`, `Vec<u8>`) for an input, or `&mut T` for \
                     copy/restore (the caller's variable gets the handler's final value)",
                ));
            }
            ty => args.push((pat.ident.clone(), ty.clone(), false)),
        }
    }
    let output = match &sig.output {
        ReturnType::Default => syn::parse_quote!(()),
        ReturnType::Type(_, ty) => (**ty).clone(),
    };
    if one_way && !matches!(&output, Type::Tuple(t) if t.elems.is_empty()) {
        return Err(syn::Error::new(
            sig.output.span(),
            "a #[oneway] method never replies, so it must return `()`",
        ));
    }
    let docs = method
        .attrs
        .iter()
        .filter(|a| a.path().is_ident("doc"))
        .cloned()
        .collect();
    Ok(Method {
        explicit_id,
        name: sig.ident.clone(),
        one_way,
        idempotent,
        docs,
        takes_context,
        args,
        output,
        span: sig.ident.span(),
    })
}

/// Refuses a method whose name is another method's stub form: `x` and `x_acked` (or
/// `x_blocking`) would both be stub methods named `x_acked`, which rustc reports far from
/// the cause.
fn check_stub_names(methods: &[Method]) -> syn::Result<()> {
    for m in methods {
        let name = m.name.to_string();
        for other in methods {
            let other_name = other.name.to_string();
            let forms: &[&str] = if other.one_way {
                &["_blocking"]
            } else {
                &["_acked", "_blocking"]
            };
            if let Some(form) = forms
                .iter()
                .find(|f| name.strip_suffix(**f) == Some(other_name.as_str()))
            {
                return Err(syn::Error::new(
                    m.span,
                    format!(
                        "method `{name}` has the name of the stub's `{form}` form of \
                         `{other_name}`; rename one of them"
                    ),
                ));
            }
        }
    }
    Ok(())
}
