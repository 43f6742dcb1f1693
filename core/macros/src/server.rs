//! The server dispatcher, `FooServer<S>`: decodes a call's arguments and runs the method.

use proc_macro2::TokenStream as TokenStream2;
use quote::{format_ident, quote};

use crate::model::{is_callback, Method, Service};

/// The dispatcher's struct and its impls, `courier::dispatch::Service` among them.
pub(crate) fn generate(service: &Service) -> TokenStream2 {
    let (server_name, trait_name, vis) = (
        &service.server_name,
        service.trait_name(),
        &service.item.vis,
    );
    let (service_name, interface, version) =
        (&service.service_name, &service.interface, service.version);
    // A constant per method id, so that match arms can name derived ids.
    let method_consts: Vec<_> = service
        .methods
        .iter()
        .map(|m| {
            let ident = format_ident!("__COURIER_ID_{}", m.name.to_string().to_uppercase());
            let id = m.id();
            (quote!(const #ident: u32 = #id;), ident)
        })
        .collect();
    let method_const_defs = method_consts.iter().map(|(def, _)| def);
    let method_const_defs_again = method_consts.iter().map(|(def, _)| def);
    let name_arms = service
        .methods
        .iter()
        .zip(&method_consts)
        .map(|(m, (_, id))| {
            let name = m.name.to_string();
            quote!(#id => ::core::option::Option::Some(#name),)
        });
    let arms = service
        .methods
        .iter()
        .zip(&method_consts)
        .map(|(m, (_, id))| dispatch_arm(m, id));
    let server_doc = format!(
        "Server dispatcher for [`{trait_name}`]: register `{server_name}::new(service)` with a `courier::Server`."
    );
    quote! {
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
    }
}

/// The match arm that runs method `m` (whose id constant is `id`): decode the arguments,
/// turn callback ids into callbacks, run the method, and make its reply.
fn dispatch_arm(m: &Method, id: &syn::Ident) -> TokenStream2 {
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
}
