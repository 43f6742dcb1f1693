//! The `#[courier::service]` attribute. Use it through the `courier` crate, which re-exports it
//! as `courier::service`; its documentation has the examples.
//!
//! From a trait of `async fn`s the attribute generates:
//!
//! - the trait itself, with each method returning `impl Future<Output = T> + Send` so that
//!   implementations can be served from any task (implement it with plain `async fn`s);
//! - `FooClient<C>`, the stub: per method `name`, `name_acked` and `name_blocking`;
//! - `FooServer<S>`, the dispatcher, implementing `courier::dispatch::Service`.
//!
//! Ids are stable: the interface id is `courier::ids::stable_id` of the trait's path
//! (`module_path!()`, `::`, the trait's name, as in `my_api::calc::Calc`), so two traits of the
//! same name in different modules differ, and each method id is `stable_id` of the method's
//! name, unless `#[courier::service(id = …, version = …)]` or a method's `#[courier(id = …)]`
//! says otherwise. The generated code calls `stable_id` itself (in constants), so there is one
//! hash, in the core. Two methods with the same id are a compile error, and so is a method
//! whose name is another's stub form (`x` and `x_acked` or `x_blocking`).
//!
//! ```ignore
//! #[courier::service(version = 2)]
//! pub trait Calc {
//!     async fn add(&self, a: i32, b: i32) -> i32;
//!     #[oneway]
//!     async fn log(&self, line: String);
//!     #[idempotent]
//!     async fn get(&self, key: String) -> Option<i32>;
//! }
//! ```

use std::collections::HashMap;

use proc_macro::TokenStream;
use proc_macro2::{Span, TokenStream as TokenStream2};
use quote::{format_ident, quote, quote_spanned};
use syn::spanned::Spanned;
use syn::{
    parse_macro_input, Attribute, FnArg, Ident, ItemTrait, LitInt, Pat, ReturnType, TraitItem,
    TraitItemFn, Type,
};

/// Turns a trait of `async fn`s into a Courier service; see the `courier` crate's docs.
#[proc_macro_attribute]
pub fn service(attr: TokenStream, item: TokenStream) -> TokenStream {
    let mut options = ServiceOptions::default();
    let parser = syn::meta::parser(|meta| {
        if meta.path.is_ident("id") {
            options.id = Some(meta.value()?.parse::<LitInt>()?.base10_parse()?);
            Ok(())
        } else if meta.path.is_ident("version") {
            options.version = Some(meta.value()?.parse::<LitInt>()?.base10_parse()?);
            Ok(())
        } else {
            Err(meta.error("unknown option: expected `id = <u32>` or `version = <u16>`"))
        }
    });
    parse_macro_input!(attr with parser);
    let item = parse_macro_input!(item as ItemTrait);
    match expand(options, item) {
        Ok(tokens) => tokens.into(),
        Err(e) => e.to_compile_error().into(),
    }
}

#[derive(Default)]
struct ServiceOptions {
    id: Option<u32>,
    version: Option<u16>,
}

struct Method {
    name: Ident,
    /// The id given with `#[courier(id = …)]`; otherwise it is derived from the name.
    explicit_id: Option<u32>,
    one_way: bool,
    /// `#[idempotent]`: calls are at-least-once.
    idempotent: bool,
    docs: Vec<Attribute>,
    /// Whether the first parameter is the call's `Context`.
    takes_context: bool,
    /// The arguments: name, the type that crosses the wire, and whether it is in-out (`&mut T`
    /// in the trait: sent, and the handler's final value sent back).
    args: Vec<(Ident, Type, bool)>,
    output: Type,
    span: Span,
}

/// Whether `ty` is `Callback<T>`: sent as an id, delivered to by calls back to the caller.
fn is_callback(ty: &Type) -> bool {
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

fn expand(options: ServiceOptions, mut item: ItemTrait) -> syn::Result<TokenStream2> {
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
    let trait_name = &item.ident;
    let vis = &item.vis;
    let bare_name = trait_name.to_string();
    let service_name = quote!(::core::concat!(::core::module_path!(), "::", #bare_name));
    let interface = match options.id {
        Some(id) => quote!(#id),
        None => quote!(::courier::ids::stable_id(#service_name)),
    };
    let id_of = |m: &Method| match m.explicit_id {
        Some(id) => quote!(#id),
        None => {
            let name = m.name.to_string();
            quote!(::courier::ids::stable_id(#name))
        }
    };
    // Derived ids are computed by the core's `stable_id` in constants; a collision among them
    // (or with an explicit one) stops the build there.
    let mut distinct = Vec::new();
    for (i, a) in methods.iter().enumerate() {
        for b in &methods[i + 1..] {
            if a.explicit_id.is_some() && b.explicit_id.is_some() {
                continue; // checked above, with a better span
            }
            let (ida, idb) = (id_of(a), id_of(b));
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
    let version = options.version.unwrap_or(1);
    let client_name = format_ident!("{}Client", trait_name);
    let server_name = format_ident!("{}Server", trait_name);
    item.supertraits
        .push(syn::parse_quote!(::core::marker::Send));
    item.supertraits
        .push(syn::parse_quote!(::core::marker::Sync));
    item.supertraits.push(syn::parse_quote!('static));
    if item.colon_token.is_none() {
        item.colon_token = Some(Default::default());
    }

    let serde = quote!(::courier::__private::serde);
    let checks = methods.iter().flat_map(|m| {
        let args = m
            .args
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

    let consts = methods.iter().map(|m| {
        let const_name = format_ident!("{}", m.name.to_string().to_uppercase());
        let name = m.name.to_string();
        let id = id_of(m);
        let idempotent = m.idempotent;
        let doc = format!("Wire descriptor of `{trait_name}::{name}`.");
        quote! {
            #[doc = #doc]
            pub const #const_name: ::courier::MethodDesc = ::courier::MethodDesc {
                service: #service_name,
                name: #name,
                interface: ::courier::InterfaceId::new(#interface),
                version: #version,
                method: ::courier::MethodId::new(#id),
                idempotent: #idempotent,
            };
        }
    });

    let stubs = methods.iter().map(|m| {
        let name = &m.name;
        let docs = &m.docs;
        let const_name = format_ident!("{}", m.name.to_string().to_uppercase());
        let params: Vec<_> = m
            .args
            .iter()
            .map(|(n, t, in_out)| if *in_out { quote!(#n: &mut #t) } else { quote!(#n: #t) })
            .collect();
        let names: Vec<_> = m.args.iter().map(|(n, _, _)| n).collect();
        // In-out arguments are sent by reference (serialized as their value); a callback is
        // registered with the client and sent as its id.
        let sent: Vec<_> = m
            .args
            .iter()
            .map(|(n, ty, in_out)| {
                if *in_out {
                    quote!(&*#n)
                } else if is_callback(ty) {
                    let id = format_ident!("__courier_callback_{}", n);
                    quote!(#id)
                } else {
                    quote!(#n)
                }
            })
            .collect();
        let prelude: Vec<_> = m
            .args
            .iter()
            .filter(|(_, ty, _)| is_callback(ty))
            .map(|(n, _, _)| {
                let id = format_ident!("__courier_callback_{}", n);
                quote!(let #id: u64 = self.client.__register_callback(#n)?;)
            })
            .collect();
        let out = &m.output;
        let blocking = format_ident!("{}_blocking", name);
        let blocking_doc = format!("[`Self::{name}`] from synchronous code: blocks this thread until it completes.");
        let in_outs: Vec<_> = m.args.iter().filter(|(_, _, io)| *io).collect();
        if m.one_way {
            quote! {
                #(#docs)*
                ///
                /// One-way: resolves once the transport has taken the request; no reply comes.
                pub async fn #name(&self, #(#params),*) -> ::core::result::Result<(), ::courier::RpcError> {
                    #(#prelude)*
                    self.client.send_with(&Self::#const_name, (#(#sent,)*), &self.options).await
                }

                #[doc = #blocking_doc]
                pub fn #blocking(&self, #(#params),*) -> ::core::result::Result<(), ::courier::RpcError> {
                    self.client.block_on(self.#name(#(#names),*))
                }
            }
        } else if in_outs.is_empty() {
            let acked = format_ident!("{}_acked", name);
            let acked_doc = format!("[`Self::{name}`], acknowledged: resolves as soon as the server has the call, before the method runs; await the returned `Pending` for the reply.");
            quote! {
                #(#docs)*
                pub async fn #name(&self, #(#params),*) -> ::core::result::Result<#out, ::courier::RpcError> {
                    #(#prelude)*
                    self.client.call(&Self::#const_name, (#(#sent,)*), &self.options).await
                }

                #[doc = #acked_doc]
                pub async fn #acked(&self, #(#params),*) -> ::core::result::Result<::courier::Pending<#out>, ::courier::RpcError> {
                    #(#prelude)*
                    self.client.call_acked(&Self::#const_name, (#(#sent,)*), &self.options).await
                }

                #[doc = #blocking_doc]
                pub fn #blocking(&self, #(#params),*) -> ::core::result::Result<#out, ::courier::RpcError> {
                    self.client.block_on(self.#name(#(#names),*))
                }
            }
        } else {
            // The reply carries the result, then each in-out argument's final value; they are
            // written back only when the reply arrives, so a failed call leaves them as they
            // were.
            let acked = format_ident!("{}_acked", name);
            let acked_doc = format!("[`Self::{name}`], acknowledged: resolves as soon as the server has the call, before the method runs; await the returned `PendingInOut` for the reply, which also writes the in-out arguments back.");
            let io_names: Vec<_> = in_outs.iter().map(|(n, _, _)| n).collect();
            let io_types: Vec<_> = in_outs.iter().map(|(_, t, _)| t).collect();
            let io_vals: Vec<_> = in_outs
                .iter()
                .map(|(n, _, _)| format_ident!("__courier_new_{}", n))
                .collect();
            let acked_params: Vec<_> = m
                .args
                .iter()
                .map(|(n, t, in_out)| {
                    if *in_out {
                        quote!(#n: &'__courier mut #t)
                    } else {
                        quote!(#n: #t)
                    }
                })
                .collect();
            quote! {
                #(#docs)*
                ///
                /// In-out arguments (`&mut`) get the handler's final values when the call
                /// succeeds, and are left as they were when it fails.
                pub async fn #name(&self, #(#params),*) -> ::core::result::Result<#out, ::courier::RpcError> {
                    #(#prelude)*
                    let (__courier_result, #(#io_vals,)*): (#out, #(#io_types,)*) = self
                        .client
                        .call(&Self::#const_name, (#(#sent,)*), &self.options)
                        .await?;
                    #(*#io_names = #io_vals;)*
                    ::core::result::Result::Ok(__courier_result)
                }

                #[doc = #acked_doc]
                pub async fn #acked<'__courier>(&self, #(#acked_params),*) -> ::core::result::Result<::courier::PendingInOut<'__courier, #out>, ::courier::RpcError> {
                    #(#prelude)*
                    let pending: ::courier::Pending<(#out, #(#io_types,)*)> = self
                        .client
                        .call_acked(&Self::#const_name, (#(#sent,)*), &self.options)
                        .await?;
                    ::core::result::Result::Ok(::courier::PendingInOut::new(async move {
                        let (__courier_result, #(#io_vals,)*) = pending.await?;
                        #(*#io_names = #io_vals;)*
                        ::core::result::Result::Ok(__courier_result)
                    }))
                }

                #[doc = #blocking_doc]
                pub fn #blocking(&self, #(#params),*) -> ::core::result::Result<#out, ::courier::RpcError> {
                    self.client.block_on(self.#name(#(#names),*))
                }
            }
        }
    });

    let method_consts: Vec<_> = methods
        .iter()
        .map(|m| {
            let ident = format_ident!("__COURIER_ID_{}", m.name.to_string().to_uppercase());
            let id = id_of(m);
            (quote!(const #ident: u32 = #id;), ident)
        })
        .collect();
    let method_const_defs = method_consts.iter().map(|(def, _)| def);
    let method_const_defs_again = method_consts.iter().map(|(def, _)| def);
    let name_arms = methods.iter().zip(&method_consts).map(|(m, (_, id))| {
        let name = m.name.to_string();
        quote!(#id => ::core::option::Option::Some(#name),)
    });
    let arms = methods.iter().zip(&method_consts).map(|(m, (_, id))| {
        let name = &m.name;
        let names: Vec<_> = m.args.iter().map(|(n, _, _)| n).collect();
        // A callback arrives as its id.
        let types: Vec<_> = m
            .args
            .iter()
            .map(|(_, t, _)| {
                if is_callback(t) {
                    quote!(u64)
                } else {
                    quote!(#t)
                }
            })
            .collect();
        let callbacks: Vec<_> = m
            .args
            .iter()
            .filter(|(_, t, _)| is_callback(t))
            .map(|(n, t, _)| quote!(let #n = <#t>::__remote(&call.context(), codec, #n)?;))
            .collect();
        let passed: Vec<_> = m
            .args
            .iter()
            .map(|(n, _, in_out)| if *in_out { quote!(&mut #n) } else { quote!(#n) })
            .collect();
        let io_names: Vec<_> = m.args.iter().filter(|a| a.2).map(|(n, _, _)| n).collect();
        let take_ctx = m
            .takes_context
            .then(|| quote!(let __courier_ctx = call.context();));
        let ctx_arg = m.takes_context.then(|| quote!(__courier_ctx,));
        let run = if io_names.is_empty() {
            quote!(service.#name(#ctx_arg #(#passed),*).await)
        } else {
            // Copy/restore: the handler works on the server's copy, which goes back with the
            // result.
            quote! {{
                #(let mut #io_names = #io_names;)*
                let __courier_result = service.#name(#ctx_arg #(#passed),*).await;
                (__courier_result, #(#io_names,)*)
            }}
        };
        quote! {
            #id => {
                let (#(#names,)*): (#(#types,)*) = call.decode(codec)?;
                #(#callbacks)*
                #take_ctx
                let service = ::std::sync::Arc::clone(&self.service);
                let future = async move { #run };
                ::core::result::Result::Ok(::courier::dispatch::handler(codec, future))
            }
        }
    });

    let client_doc = format!(
        "Client stub for [`{trait_name}`]: wraps a [`courier::Client`] and calls the service's methods on it."
    );
    let server_doc = format!(
        "Server dispatcher for [`{trait_name}`]: register `{server_name}::new(service)` with a `courier::Server`."
    );

    Ok(quote! {
        #item

        #[doc = #client_doc]
        #vis struct #client_name<C> {
            client: ::courier::Client<C>,
            options: ::courier::CallOptions,
        }

        impl<C: ::core::clone::Clone> ::core::clone::Clone for #client_name<C> {
            fn clone(&self) -> Self {
                #client_name { client: self.client.clone(), options: self.options.clone() }
            }
        }

        impl<C: ::core::fmt::Debug> ::core::fmt::Debug for #client_name<C> {
            fn fmt(&self, f: &mut ::core::fmt::Formatter<'_>) -> ::core::fmt::Result {
                f.debug_struct(stringify!(#client_name))
                    .field("client", &self.client)
                    .field("options", &self.options)
                    .finish()
            }
        }

        impl<C: ::courier::Codec> #client_name<C> {
            #(#consts)*

            /// Wraps a connected client; calls use default [`courier::CallOptions`].
            pub fn new(client: ::courier::Client<C>) -> Self {
                #client_name { client, options: ::courier::CallOptions::new() }
            }

            /// A stub on the same connection whose calls use `options`.
            pub fn with_options(&self, options: ::courier::CallOptions) -> Self {
                #client_name { client: self.client.clone(), options }
            }

            /// The client underneath.
            pub fn client(&self) -> &::courier::Client<C> {
                &self.client
            }

            #(#stubs)*
        }

        #[doc = #server_doc]
        #vis struct #server_name<S> {
            service: ::std::sync::Arc<S>,
        }

        impl<S> ::core::clone::Clone for #server_name<S> {
            fn clone(&self) -> Self {
                #server_name { service: ::std::sync::Arc::clone(&self.service) }
            }
        }

        impl<S> ::core::fmt::Debug for #server_name<S> {
            fn fmt(&self, f: &mut ::core::fmt::Formatter<'_>) -> ::core::fmt::Result {
                f.debug_struct(stringify!(#server_name)).finish_non_exhaustive()
            }
        }

        impl<S: #trait_name> #server_name<S> {
            /// Wraps a service implementation for registration with a server.
            pub fn new(service: S) -> Self {
                #server_name { service: ::std::sync::Arc::new(service) }
            }

            /// Wraps a service implementation that is shared with other code.
            pub fn from_arc(service: ::std::sync::Arc<S>) -> Self {
                #server_name { service }
            }
        }

        impl<S: #trait_name> ::courier::dispatch::Service for #server_name<S> {
            const NAME: &'static str = #service_name;
            const INTERFACE: ::courier::InterfaceId = ::courier::InterfaceId::new(#interface);
            const VERSION: u16 = #version;

            fn dispatch<C: ::courier::Codec>(
                &self,
                codec: &C,
                call: ::courier::dispatch::Incoming<'_>,
            ) -> ::core::result::Result<::courier::dispatch::HandlerFuture, ::courier::RpcError> {
                #(#method_const_defs)*
                match call.method().get() {
                    #(#arms)*
                    _ => ::core::result::Result::Err(call.unknown_method()),
                }
            }

            fn method_name(method: ::courier::MethodId) -> ::core::option::Option<&'static str> {
                #(#method_const_defs_again)*
                match method.get() {
                    #(#name_arms)*
                    _ => ::core::option::Option::None,
                }
            }
        }

        #(#distinct)*

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
    })
}
