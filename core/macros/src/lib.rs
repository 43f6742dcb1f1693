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

mod client;
mod model;
mod server;

use proc_macro::TokenStream;
use proc_macro2::TokenStream as TokenStream2;
use quote::quote;
use syn::{parse_macro_input, ItemTrait, LitInt};

use model::{Service, ServiceOptions};

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

/// Parses the trait into the service model, then generates each item from it: the trait as
/// implementors see it, the client stub, the server dispatcher, and the compile-time checks.
fn expand(options: ServiceOptions, item: ItemTrait) -> syn::Result<TokenStream2> {
    let service = Service::parse(options, item)?;
    let item = &service.item;
    let client = client::generate(&service);
    let server = server::generate(&service);
    let distinct = service.distinct_ids();
    let checks = service.wire_type_checks();
    Ok(quote! {
        #item
        #client
        #server
        #(#distinct)*
        #checks
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Traits that between them use every feature the attribute knows.
    const SAMPLES: &[(&str, &str, &str)] = &[
        (
            "plain",
            "",
            "pub trait Calc {
                /// Adds.
                async fn add(&self, a: i32, b: i32) -> i32;
                async fn div(&self, a: i32, b: i32) -> Result<i32, String>;
                #[oneway]
                async fn log(&self, line: String);
                async fn nothing(&self);
            }",
        ),
        (
            "every_feature",
            "id = 0x4341_4C43, version = 3",
            "pub(crate) trait Lab {
                #[idempotent]
                async fn get(&self, key: String) -> Option<String>;
                #[courier(id = 7)]
                async fn edit(&self, ctx: Context, text: &mut String, n: u32, more: &mut Vec<u8>) -> u32;
                async fn watch(&self, progress: Callback<u32>, ticks: u32) -> ();
                #[oneway]
                #[courier(id = 9)]
                async fn poke(&self, ctx: Context);
            }",
        ),
    ];

    fn expansion(attr: &str, item: &str) -> String {
        let mut options = ServiceOptions::default();
        let parser = syn::meta::parser(|meta| {
            let value = meta.value()?.parse::<LitInt>()?;
            if meta.path.is_ident("id") {
                options.id = Some(value.base10_parse()?);
            } else {
                options.version = Some(value.base10_parse()?);
            }
            Ok(())
        });
        syn::parse::Parser::parse_str(parser, attr).expect("options");
        let item: ItemTrait = syn::parse_str(item).expect("a trait");
        expand(options, item).expect("an expansion").to_string()
    }

    /// The expansion of each sample is the one recorded in `snapshots/`: a refactoring of the
    /// generators must not change the code users get. `COURIER_SNAPSHOTS=write` records anew
    /// after a deliberate change.
    #[test]
    fn expansions_match_their_snapshots() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("snapshots");
        for (name, attr, item) in SAMPLES {
            let got = expansion(attr, item);
            let path = dir.join(format!("{name}.txt"));
            if std::env::var("COURIER_SNAPSHOTS").as_deref() == Ok("write") {
                std::fs::write(&path, &got).expect("write a snapshot");
                continue;
            }
            let want = std::fs::read_to_string(&path).expect("a recorded snapshot");
            assert!(got == want, "the expansion of `{name}` changed:\n{got}");
        }
    }
}
