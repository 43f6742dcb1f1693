//! The client stub, `FooClient<C>`: per method `name`, `name_acked` and `name_blocking`, and a
//! `MethodDesc` constant.

use proc_macro2::TokenStream as TokenStream2;
use quote::{format_ident, quote};

use crate::model::{is_callback, Method, Service};

/// The stub's struct and its impls.
pub(crate) fn generate(service: &Service) -> TokenStream2 {
    let client_name = &service.client_name;
    let trait_name = service.trait_name();
    let vis = &service.item.vis;
    let consts = service.methods.iter().map(|m| desc_const(service, m));
    let stubs = service.methods.iter().map(stub);
    let client_doc = format!(
        "Client stub for [`{trait_name}`]: wraps a [`courier::Client`] and calls the service's methods on it."
    );
    quote! {
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
    }
}

/// The `MethodDesc` constant of one method: what crosses the wire to name it.
fn desc_const(service: &Service, m: &Method) -> TokenStream2 {
    let const_name = m.desc_const();
    let name = m.name.to_string();
    let id = m.id();
    let idempotent = m.idempotent;
    let (service_name, interface, version) =
        (&service.service_name, &service.interface, service.version);
    let doc = format!("Wire descriptor of `{}::{name}`.", service.trait_name());
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
}

/// What a stub method is made of, whatever its kind.
struct Parts<'a> {
    m: &'a Method,
    /// The parameters as the stub takes them (`&mut T` for an in-out one).
    params: Vec<TokenStream2>,
    /// The argument names, to pass on to another form.
    names: Vec<&'a syn::Ident>,
    /// What is sent for each argument: in-out ones by reference (serialized as their value),
    /// a callback as the id it was registered under.
    sent: Vec<TokenStream2>,
    /// Registers each callback with the client before the call.
    prelude: Vec<TokenStream2>,
    blocking: syn::Ident,
    blocking_doc: String,
}

impl<'a> Parts<'a> {
    fn new(m: &'a Method) -> Self {
        let name = &m.name;
        let params = m
            .args
            .iter()
            .map(|(n, t, in_out)| {
                if *in_out {
                    quote!(#n: &mut #t)
                } else {
                    quote!(#n: #t)
                }
            })
            .collect();
        let names = m.args.iter().map(|(n, _, _)| n).collect();
        let sent = m
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
        let prelude = m
            .args
            .iter()
            .filter(|(_, ty, _)| is_callback(ty))
            .map(|(n, _, _)| {
                let id = format_ident!("__courier_callback_{}", n);
                quote!(let #id: u64 = self.client.__register_callback(#n)?;)
            })
            .collect();
        Parts {
            m,
            params,
            names,
            sent,
            prelude,
            blocking: format_ident!("{}_blocking", name),
            blocking_doc: format!(
                "[`Self::{name}`] from synchronous code: blocks this thread until it completes."
            ),
        }
    }
}

impl Parts<'_> {
    /// `name_blocking`, which runs `name` to its end on the calling thread; it returns what
    /// `name` does, `Result<out, RpcError>`.
    fn blocking_form(&self, out: TokenStream2) -> TokenStream2 {
        let Parts {
            m,
            params,
            names,
            blocking,
            blocking_doc,
            ..
        } = self;
        let name = &m.name;
        quote! {
            #[doc = #blocking_doc]
            pub fn #blocking(&self, #(#params),*) -> ::core::result::Result<#out, ::courier::RpcError> {
                self.client.block_on(self.#name(#(#names),*))
            }
        }
    }
}

/// The stub methods of one service method.
fn stub(m: &Method) -> TokenStream2 {
    let parts = Parts::new(m);
    if m.one_way {
        one_way(&parts)
    } else if m.in_outs().is_empty() {
        two_way(&parts)
    } else {
        in_out(&parts)
    }
}

/// `name` and `name_blocking` of a one-way method.
fn one_way(p: &Parts<'_>) -> TokenStream2 {
    let Parts {
        m,
        params,
        sent,
        prelude,
        ..
    } = p;
    let (name, docs, const_name) = (&m.name, &m.docs, m.desc_const());
    let blocking = p.blocking_form(quote!(()));
    quote! {
        #(#docs)*
        ///
        /// One-way: resolves once the transport has taken the request; no reply comes.
        pub async fn #name(&self, #(#params),*) -> ::core::result::Result<(), ::courier::RpcError> {
            #(#prelude)*
            self.client.send_with(&Self::#const_name, (#(#sent,)*), &self.options).await
        }

        #blocking
    }
}

/// `name`, `name_acked` and `name_blocking` of a two-way method without in-out arguments.
fn two_way(p: &Parts<'_>) -> TokenStream2 {
    let Parts {
        m,
        params,
        sent,
        prelude,
        ..
    } = p;
    let (name, docs, const_name, out) = (&m.name, &m.docs, m.desc_const(), &m.output);
    let blocking = p.blocking_form(quote!(#out));
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

        #blocking
    }
}

/// The three forms of a method with in-out arguments. The reply carries the result, then each
/// in-out argument's final value; they are written back only when the reply arrives, so a
/// failed call leaves them as they were.
fn in_out(p: &Parts<'_>) -> TokenStream2 {
    let Parts {
        m,
        params,
        sent,
        prelude,
        ..
    } = p;
    let (name, docs, const_name, out) = (&m.name, &m.docs, m.desc_const(), &m.output);
    let blocking = p.blocking_form(quote!(#out));
    let in_outs = m.in_outs();
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

        #blocking
    }
}
