pub struct NotSerde;

#[courier::service]
pub trait Store {
    async fn put(&self, value: NotSerde) -> u32;
}

fn main() {}
