require ["fileinto", "imap4flags"];
if size :over 5K { fileinto "Archive"; }
if size :under 600 { addflag "small"; }
