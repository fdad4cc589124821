require ["body", "fileinto"];
if body :text :contains "invoice" { fileinto "Invoices"; }
elsif body :contains "unsubscribe" { fileinto "Spam"; }
